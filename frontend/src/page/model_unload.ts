/**
 * Unload the chosen model, for the owner: the broker's `POST v1/models/unload` (`MODEL_UNLOAD_PATH`),
 * offered only where `GET /v1/models` says `can_unload` (the owner, behind a router) and only for a
 * loaded model. An unload ends every reply that model is giving, whoever asked for it, which is why
 * named users never see it. The browser never reaches llama-server's `/models/*`: the broker judges
 * who may, and the gate, which holds the key, asks the router.
 */
import { MODEL_UNLOAD_PATH } from "../documents.ts";
import type { ModelEntry, ModelPicker } from "./models.ts";

/** The route, relative to the page (the page may sit under a prefix). */
const UNLOAD_URL = MODEL_UNLOAD_PATH.replace(/^\//, "");

/** Whether to offer Unload for this model: a loaded one, to a user the broker lets unload. */
export function offerUnload(model: ModelEntry | undefined, canUnload: boolean): boolean {
  return canUnload && model?.status === "loaded";
}

/** What a refused unload means to the owner, from the answer's status (0: no answer). */
export function unloadRefusal(status: number): string {
  if (status === 401) return "Your session has ended: log in again to unload a model.";
  if (status === 403) return "Only the owner may unload a model.";
  if (status === 400) return "This model is not available to unload.";
  if (status === 409) return "This server runs one model, which stays loaded.";
  if (status === 0) return "The model could not be unloaded: the server did not answer.";
  return "The model could not be unloaded.";
}

export class ModelUnload {
  /** An unload in flight: the list may still say loaded until the router's answer shows. */
  private pending = false;

  constructor(
    private readonly picker: ModelPicker,
    private readonly button: HTMLButtonElement,
    private readonly showNotice: (text: string) => void,
  ) {
    button.addEventListener("click", () => void this.unload());
  }

  /** Show Unload for the chosen model's entry where the owner may use it. */
  show(model: ModelEntry | undefined): void {
    this.button.hidden = !offerUnload(model, this.picker.canUnload);
    this.button.disabled = this.pending;
  }

  /** Ask the broker to unload the chosen model; then follow the list until it no longer says loaded. */
  async unload(): Promise<void> {
    const model = this.picker.value;
    if (model === undefined || this.pending) return;
    this.pending = true;
    this.button.disabled = true;
    let status = 0;
    try {
      const answer = await fetch(UNLOAD_URL, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model }),
      });
      status = answer.status;
      await answer.body?.cancel().catch(() => undefined);
    } catch {
      status = 0;
    }
    if (status !== 200) {
      this.pending = false;
      this.button.disabled = false;
      this.showNotice(unloadRefusal(status));
      await this.picker.refresh();
      return;
    }
    this.showNotice("");
    const stop = this.picker.watch((entry) => {
      if (entry?.id === model && entry.status === "loaded") return;
      this.pending = false;
      stop();
      this.show(entry);
    });
  }
}
