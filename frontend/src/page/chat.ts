/**
 * The conversation's turns and their runs: send a message, stream its reply, and the message
 * actions (copy, edit and resend, regenerate, retry), each of which cuts the conversation at a turn
 * and runs it again.
 */
import { resumeChat, streamChat } from "../client.ts";
import type { Lane, UIEvent } from "../shape.ts";
import { branchNav, copyWithFeedback, type MessageAction } from "./actions.ts";
import { branchPosition, flipTo, forkAt } from "./branches.ts";
import type { Composer } from "./composer.ts";
import { historyFor, type TurnData } from "./conversation.ts";
import type { ScrollFollow } from "./follow.ts";
import type { ModelPicker } from "./models.ts";
import { tokensFlow } from "./poll.ts";
import { ReplyView } from "./reply.ts";
import { type ChatSettings, requestFields } from "./settings.ts";
import { EXECUTORS, TOOL_SPECS } from "./tools.ts";
import { openEditor, userMessage } from "./user_message.ts";

interface Turn {
  data: TurnData;
  userEl: HTMLLIElement;
  reply: ReplyView | null;
}

export interface ChatPage {
  list: HTMLOListElement;
  composer: Composer;
  picker: ModelPicker;
  follow: ScrollFollow;
  showNotice(text: string): void;
  setBusy(busy: boolean): void;
  showLane(lane: Lane): void;
  showSpeed(tokensPerSecond: number): void;
  showFirstToken(seconds: number): void;
  useTools(): boolean;
  /** The conversation's settings, or the errors that keep a message from being sent. */
  settings(): { settings: ChatSettings; errors: string[] };
}

export class Chat {
  private turns: Turn[] = [];
  private controller: AbortController | null = null;

  constructor(private readonly page: ChatPage) {
    page.list.addEventListener("click", (event) => {
      const button = (event.target as Element | null)?.closest<HTMLButtonElement>(".actions button[data-action]");
      const item = button?.closest<HTMLLIElement>("li.msg");
      if (button === null || button === undefined || item === null || item === undefined) return;
      this.act(button.dataset.action as MessageAction, item, button);
    });
  }

  /** Called after each change a reload should keep: a reply settled, a turn cut or edited. */
  onChange: () => void = () => undefined;

  /** The turns, as stored. */
  snapshot(): TurnData[] {
    return this.turns.map((turn) => ({ ...turn.data }));
  }

  /** Show a stored conversation in place of the current one (stopping a reply first). */
  load(turns: readonly TurnData[]): void {
    this.stop();
    this.replaceFrom(0, turns);
    this.page.follow.resume();
    // A reply that was streaming when the page went away: pick its stream up again.
    const last = this.turns.at(-1);
    if (last?.data.pending !== undefined && !this.busy) {
      last.reply?.root.remove();
      void this.run(last, last.data.pending);
    }
  }

  /** Replace the turns from `index` on with `turns`' (the ones before it stay as they are). */
  private replaceFrom(index: number, turns: readonly TurnData[]): void {
    for (const turn of this.turns.splice(index)) {
      turn.userEl.remove();
      turn.reply?.root.remove();
    }
    for (const data of turns.slice(index)) {
      const turn: Turn = { data: { ...data }, userEl: userMessage(data.text, data.image), reply: ReplyView.restored(data.reply) };
      this.page.list.append(turn.userEl, (turn.reply as ReplyView).root);
      this.turns.push(turn);
      this.decorate(turn);
    }
  }

  /** Offer the switcher between a turn's answers, once its reply has settled. */
  private decorate(turn: Turn): void {
    const position = branchPosition(turn.data);
    const bar = turn.reply?.root.querySelector(":scope > .actions");
    if (position === null || bar === null || bar === undefined) return;
    bar.querySelector(".branches")?.remove();
    bar.append(branchNav(position.index, position.count));
  }

  get busy(): boolean {
    return this.controller !== null;
  }

  get length(): number {
    return this.turns.length;
  }

  stop(): void {
    this.controller?.abort();
  }

  /** Send what the composer holds as a new turn. */
  async send(): Promise<void> {
    const { composer } = this.page;
    const text = composer.text;
    if (text === "" || this.busy) return;
    const { errors } = this.page.settings();
    if (errors.length > 0) return this.page.showNotice(errors.join(" "));
    const turn: Turn = { data: { text, image: composer.image, reply: "" }, userEl: userMessage(text, composer.image), reply: null };
    this.turns.push(turn);
    this.page.list.append(turn.userEl);
    composer.setText("");
    composer.clearImage();
    await this.run(turn);
  }

  private act(action: MessageAction, item: HTMLLIElement, button: HTMLButtonElement): void {
    const turn = this.turns.find((each) => each.userEl === item || each.reply?.root === item);
    if (turn === undefined) return;
    const isUser = turn.userEl === item;
    if (action === "copy") void copyWithFeedback(button, isUser ? turn.data.text : turn.data.reply);
    else if (this.busy) return;
    else if (action === "edit") openEditor(item, turn.data.text, (text) => this.rerun(turn, text));
    else if (action === "retry") this.rerun(turn, turn.data.text);
    else if (action === "regenerate") this.regenerate(turn);
    else this.flip(turn, action === "branch-next" ? 1 : -1);
  }

  /** Cut the conversation after `turn`'s message, set its text, and answer it again. */
  private rerun(turn: Turn, text: string): void {
    if (this.busy) return;
    const index = this.turns.indexOf(turn);
    this.replaceFrom(index + 1, []);
    turn.reply?.root.remove();
    turn.reply = null;
    // An edited message is a new question: the answers kept for the old one no longer belong to it.
    if (text !== turn.data.text) turn.data = { text, image: turn.data.image, reply: "" };
    turn.data.reply = "";
    void this.run(turn);
  }

  /** Answer `turn` again, keeping its answer (and what followed it) as a branch to flip back to. */
  private regenerate(turn: Turn): void {
    const index = this.turns.indexOf(turn);
    const forked = forkAt(this.snapshot(), index);
    this.replaceFrom(index + 1, []);
    turn.reply?.root.remove();
    turn.reply = null;
    turn.data = forked[index] as TurnData;
    void this.run(turn);
  }

  /** Show `turn`'s previous or next answer, with the conversation that followed it. */
  private flip(turn: Turn, step: 1 | -1): void {
    const index = this.turns.indexOf(turn);
    const position = branchPosition(turn.data);
    if (position === null) return;
    const flipped = flipTo(this.snapshot(), index, position.index + step);
    this.replaceFrom(index, flipped);
    this.page.follow.update();
    this.onChange();
  }

  private running: Promise<void> | null = null;

  /** Settles when no reply runs (after stopping one, before switching conversations). */
  async idle(): Promise<void> {
    this.stop();
    await this.running;
  }

  /** Answer `turn`, or with `resume` (a conversation id) pick up its reply's stream again. */
  private run(turn: Turn, resume?: string): Promise<void> {
    const running = this.runTurn(turn, resume).finally(() => {
      if (this.running === running) this.running = null;
    });
    this.running = running;
    return running;
  }

  private async runTurn(turn: Turn, resume: string | undefined): Promise<void> {
    const { page } = this;
    const reply = new ReplyView(() => page.follow.update());
    turn.reply = reply;
    page.list.append(reply.root);
    page.showNotice("");
    const controller = new AbortController();
    this.controller = controller;
    page.setBusy(true);
    const model = resume === undefined ? page.picker.value : undefined;
    if (model !== undefined) reply.showModel(model);
    // The request starts now; the scroll to the end (a layout read, free once the frame has painted) and
    // the state poll (a fetch) wait until the message has painted, so the Send click's frame stays short.
    // Watching ends when tokens flow.
    let watching: (() => void) | null = null;
    let watched = true;
    const unwatch = (): void => {
      watched = false;
      watching?.();
      watching = null;
    };
    void afterPaint().then(() => {
      page.follow.resume();
      if (!watched) return;
      watching = page.picker.watch((entry) => {
        if (model !== undefined) reply.showModelLoading(model, entry?.status === "loading", entry?.progress);
      });
    });
    try {
      const events = resume === undefined ? this.request(turn, controller.signal, model) : resumeChat(resume, { signal: controller.signal });
      await this.show(reply, events, unwatch);
    } finally {
      unwatch();
      this.controller = null;
      delete turn.data.pending;
      turn.data.reply = reply.content;
      this.decorate(turn);
      page.setBusy(false);
      this.onChange();
      page.follow.update();
      page.composer.prompt.focus();
    }
  }

  /** The reply's events; each stream's conversation id is stored with the turn while it runs. */
  private request(turn: Turn, signal: AbortSignal, model: string | undefined): AsyncGenerator<UIEvent> {
    const { page } = this;
    const useTools = page.useTools();
    const { settings } = page.settings();
    const messages = historyFor(this.turns.map((each) => each.data), this.turns.indexOf(turn), settings.system);
    const onConversation = (id: string): void => {
      turn.data.pending = id;
      this.onChange();
    };
    return streamChat(
      { messages, ...requestFields(settings), ...(useTools ? { tools: TOOL_SPECS } : {}) },
      { signal, resumable: true, onConversation, ...(model !== undefined ? { model } : {}), ...(useTools ? { tools: EXECUTORS } : {}) },
    );
  }

  private async show(reply: ReplyView, events: AsyncGenerator<UIEvent>, unwatch: () => void): Promise<void> {
    const { page } = this;
    for await (const event of events) {
      // Tokens flow: the model is loaded, and the picker's poll has nothing left to show.
      if (tokensFlow(event)) unwatch();
      if (event.type === "notice") page.showNotice(event.message);
      else if (event.type === "text_delta" || event.type === "reasoning_start") page.showNotice("");
      const waiting = reply.firstTokenSeconds === null;
      reply.apply(event);
      if (waiting && reply.firstTokenSeconds !== null) page.showFirstToken(reply.firstTokenSeconds);
      if (event.type === "timings" && reply.tokensPerSecond !== null) page.showSpeed(reply.tokensPerSecond);
      if (event.type === "finish") page.showLane(event.lane);
      // Text renders once per frame and follows itself; everything else changes the layout now.
      if (event.type !== "text_delta" && event.type !== "reasoning_delta") page.follow.update();
    }
  }
}

/** How long the work after a paint waits for a frame before it runs anyway: a hidden tab paints none. */
const PAINT_WAIT_MS = 100;

/** Settles in a task after the next frame has painted, or after `PAINT_WAIT_MS` where no frame comes. */
function afterPaint(): Promise<void> {
  return new Promise((resolve) => {
    const fallback = setTimeout(resolve, PAINT_WAIT_MS);
    if (typeof requestAnimationFrame !== "function") return;
    requestAnimationFrame(() => {
      clearTimeout(fallback);
      setTimeout(resolve, 0);
    });
  });
}
