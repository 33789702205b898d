/**
 * Load the chosen model before a message needs it, and show the load's progress.
 *
 * A router loads a model when a request names it, and the gate charges that load to the request's
 * user (the broker's loads per minute). So a load is one such request, the cheapest there is: a
 * one-word prompt counted on the lane's token-counting route (`chat_input_tokens`), which tokenizes
 * and generates nothing. It goes through `directFetch`, so it negotiates its own grant and falls back
 * to the baseline as any lane request does; no route of its own, no right the user lacks.
 * Unloading is the owner's alone (`model_unload.ts`): it ends other users' replies.
 */
import { directFetch } from "../direct_fetch.ts";
import { LANE_ROUTES } from "../lanes.ts";
import type { ModelEntry, ModelPicker } from "./models.ts";

/** The counting route's path, relative to the page (directFetch picks the route by its path's end). */
const LOAD_PATH = LANE_ROUTES.chat_input_tokens.path.replace(/^\//, "");

/** The words under the picker for a model in this state: what the Load control says and does. */
export function loadState(model: ModelEntry | undefined): { offer: boolean; progress: number | null; text: string } {
  if (model === undefined || model.status === "loaded") return { offer: false, progress: null, text: "" };
  if (model.status === "loading") {
    const percent = model.progress === undefined ? "" : ` ${Math.round(100 * model.progress)}%`;
    return { offer: false, progress: model.progress ?? null, text: `Loading${percent}…` };
  }
  return { offer: true, progress: null, text: "" };
}

/** What a refused load means to a user, from the answer's status and `Retry-After`. */
export function loadRefusal(status: number, retryAfter: string | null): string {
  if (status === 429) {
    const seconds = Number(retryAfter);
    const wait = Number.isFinite(seconds) && seconds > 0 ? ` Try again in ${Math.ceil(seconds)} s.` : " Try again later.";
    return `Too many model loads for now.${wait}`;
  }
  if (status === 401) return "Your session has ended: log in again to load a model.";
  if (status === 400) return "This model is not available to you.";
  return "The model could not be loaded.";
}

/**
 * How many more "not loaded" listings of a model just loaded are taken as stale. The list the page reads
 * is up to 1.5 s old (the broker's cache, the gate's poll of the router), and a small model loads in
 * less: the first read after a load that answered can still say "not loaded". The poll reads every 2 s.
 */
export const STALE_LISTINGS = 4;

/** Whether a listing of `model` is taken as stale: it says "not loaded" while `holding` is about it. */
export function heldAsLoading(model: ModelEntry | undefined, holding: { id: string; left: number } | null): boolean {
  return model !== undefined && model.status === "unloaded" && holding !== null && holding.id === model.id && holding.left > 0;
}

export class ModelLoad {
  private unwatch: (() => void) | null = null;
  /** The model being loaded, and how many "not loaded" listings of it are still taken as stale: every
   * one while its request is in flight (the router may list it unloaded until the load starts), then
   * `STALE_LISTINGS` once the request answered. */
  private holding: { id: string; left: number } | null = null;
  private pending = false;
  private readonly send = directFetch();

  constructor(
    private readonly picker: ModelPicker,
    private readonly button: HTMLButtonElement,
    private readonly bar: HTMLProgressElement,
    private readonly words: HTMLSpanElement,
    private readonly showNotice: (text: string) => void,
  ) {
    button.addEventListener("click", () => void this.load());
  }

  /** Show the Load control, or the load's progress, for the chosen model's entry. */
  show(model: ModelEntry | undefined): void {
    if (heldAsLoading(model, this.holding)) {
      if (!this.pending && this.holding !== null) this.holding.left -= 1;
      return;
    }
    if (model?.status !== "unloaded") this.holding = null;
    const state = loadState(model);
    this.button.hidden = !state.offer;
    this.button.disabled = false;
    this.words.textContent = state.text;
    this.words.hidden = state.text === "";
    this.bar.hidden = model?.status !== "loading";
    if (state.progress === null) this.bar.removeAttribute("value");
    else this.bar.value = state.progress;
    if (model?.status === "loading") this.follow();
    else this.stopFollowing();
  }

  /** Ask for the chosen model with a request that loads it; the picker's poll shows the rest. */
  async load(): Promise<void> {
    const model = this.picker.value;
    if (model === undefined) return;
    this.pending = true;
    this.holding = { id: model, left: STALE_LISTINGS };
    this.button.disabled = true;
    this.words.textContent = "Loading…";
    this.words.hidden = false;
    this.bar.removeAttribute("value");
    this.bar.hidden = false;
    this.follow();
    let answer: Response;
    try {
      answer = await this.send(LOAD_PATH, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "Hi" }] }),
      });
    } catch {
      this.pending = false;
      this.holding = null;
      this.failed("The model could not be loaded: the server did not answer.");
      await this.picker.refresh();
      return;
    }
    await answer.body?.cancel().catch(() => undefined);
    this.pending = false;
    if (!answer.ok) {
      this.holding = null;
      this.failed(loadRefusal(answer.status, answer.headers.get("Retry-After")));
    }
    await this.picker.refresh();
  }

  private failed(text: string): void {
    this.stopFollowing();
    this.showNotice(text);
  }

  /** Poll the states while the load runs (the picker's one poll), until the model is loaded. */
  private follow(): void {
    this.unwatch ??= this.picker.watch(() => undefined);
  }

  private stopFollowing(): void {
    this.unwatch?.();
    this.unwatch = null;
  }
}
