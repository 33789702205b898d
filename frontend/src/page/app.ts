/**
 * The demo chat at `/`. Every path it uses is relative, so a reverse proxy's path prefix works.
 * This module wires the page's parts together: the composer, the model picker, the conversation and
 * its scroll-follow, and the header's status.
 */
import { Account } from "./account.ts";
import { bindContentActions } from "./actions.ts";
import { Chat } from "./chat.ts";
import { Composer } from "./composer.ts";
import { ScrollFollow } from "./follow.ts";
import { showLane } from "./lane.ts";
import { ModelLoad } from "./model_load.ts";
import { ModelUnload } from "./model_unload.ts";
import { ModelPicker } from "./models.ts";
import { SettingsPanel } from "./settings.ts";
import { Conversations } from "./sidebar.ts";
import { ConversationStore, dbNameFor } from "./store.ts";
import { bindTheme } from "./theme.ts";
import { UsageBadge } from "./usage.ts";

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

/** The key the broker gave this page for its user (empty where it did not): each user's own store. */
function userKey(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="llama-direct-user"]')?.content ?? "";
}

/** The model picker with its load and unload buttons: a choice offers images and tools as the model takes them. */
function bindModels(
  composer: Composer,
  showNotice: (text: string) => void,
): { picker: ModelPicker; toolsOffer: HTMLLabelElement } {
  const picker = new ModelPicker(byId<HTMLSelectElement>("model"));
  const load = new ModelLoad(
    picker,
    byId<HTMLButtonElement>("model-load"),
    byId<HTMLProgressElement>("model-progress"),
    byId<HTMLSpanElement>("model-state"),
    showNotice,
  );
  const unload = new ModelUnload(picker, byId<HTMLButtonElement>("model-unload"), showNotice);
  const toolsOffer = byId<HTMLLabelElement>("tools-offer");
  picker.onChoice = (model) => {
    composer.offerImages(model?.vision === true);
    load.show(model);
    unload.show(model);
    // Demo tools only for a template that takes them: another model would answer in prose, or refuse.
    toolsOffer.hidden = model?.tools !== true;
  };
  composer.offerImages(false);
  void picker.refresh();
  return { picker, toolsOffer };
}

/** Send on submit and on Enter (Shift+Enter is a new line); stop on the button and on Escape. */
function bindSendAndStop(form: HTMLFormElement, composer: Composer, stop: HTMLButtonElement, chat: Chat): void {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void chat.send();
  });
  composer.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      void chat.send();
    }
  });
  stop.addEventListener("click", () => chat.stop());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") chat.stop();
  });
}

function start(): void {
  bindTheme(byId<HTMLButtonElement>("theme"));
  const form = byId<HTMLFormElement>("composer");
  const send = byId<HTMLButtonElement>("send");
  const stop = byId<HTMLButtonElement>("stop");
  const list = byId<HTMLOListElement>("messages");
  const empty = byId<HTMLParagraphElement>("empty");
  const notice = byId<HTMLParagraphElement>("notice");
  const toolsToggle = byId<HTMLInputElement>("tools");
  const showNotice = (text: string): void => {
    notice.textContent = text;
    notice.hidden = text === "";
  };
  const composer = new Composer(showNotice);
  const { picker, toolsOffer } = bindModels(composer, showNotice);
  const follow = new ScrollFollow(byId<HTMLElement>("conversation"), byId<HTMLButtonElement>("jump"));
  bindContentActions(list);
  const settings = new SettingsPanel();
  const usage = new UsageBadge(byId<HTMLSpanElement>("usage"));
  void usage.refresh();

  const chat = new Chat({
    list,
    composer,
    picker,
    follow,
    showNotice,
    setBusy: (busy) => {
      send.disabled = busy;
      stop.disabled = !busy;
      list.setAttribute("aria-busy", String(busy));
      empty.hidden = true;
      if (!busy) usage.settled();
    },
    showLane: (lane) => showLane(byId<HTMLSpanElement>("lane"), lane),
    showSpeed: (tps) => {
      byId<HTMLSpanElement>("tps").textContent = tps.toFixed(1);
      byId<HTMLSpanElement>("speed").hidden = false;
    },
    showFirstToken: (seconds) => {
      byId<HTMLSpanElement>("ttft").textContent = seconds.toFixed(seconds < 10 ? 2 : 1);
      byId<HTMLSpanElement>("first-token").hidden = false;
      byId<HTMLSpanElement>("speed").title = `Generation speed of the last reply; its first token came after ${seconds.toFixed(2)} s`;
    },
    useTools: () => toolsToggle.checked && !toolsOffer.hidden,
    settings: () => settings.read(),
  });

  bindSendAndStop(form, composer, stop, chat);
  composer.prompt.focus();
  const user = userKey();
  void ConversationStore.open(dbNameFor(user)).then((store) => {
    const conversations = new Conversations(store, chat, settings);
    new Account(conversations, showNotice, user);
    return conversations.restore();
  });
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
