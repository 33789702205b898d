/**
 * The model picker: the broker's `GET /v1/models` (the models this user may use, each with its state),
 * the choice kept in localStorage across reloads, and the state of the chosen model while it loads.
 * Names only: the broker never sends a file path.
 */
import { latestJson } from "./get_json.ts";
import { pollEvery } from "./poll.ts";

export type ModelStatus = "unloaded" | "loading" | "loaded";

export interface ModelEntry {
  id: string;
  status: ModelStatus;
  /** How much of the load is done (0..1): only while loading, and only once the router reported it. */
  progress?: number;
  /** Present (true) only for a model that reads images. */
  vision?: true;
  /** Present (true) only for a model whose chat template takes tools (llama-server's `/props`). */
  tools?: true;
}

export const STORAGE_KEY = "llama-direct.model";

const STATUS_WORDS: Record<ModelStatus, string> = {
  unloaded: "not loaded",
  loading: "loading…",
  loaded: "ready",
};

/** The status line while the chosen model loads: its name, and the router's fraction when known. */
export function loadingLine(name: string, progress: number | undefined): string {
  return progress === undefined ? `Loading ${name}…` : `Loading ${name}… ${Math.round(100 * progress)}%`;
}

/** A model's state in the picker, with the load's percentage when known. */
export function statusWords(model: ModelEntry): string {
  if (model.status === "loading" && model.progress !== undefined) {
    return `loading… ${Math.round(100 * model.progress)}%`;
  }
  return STATUS_WORDS[model.status];
}

export function parseModels(value: unknown): ModelEntry[] {
  if (typeof value !== "object" || value === null || !Array.isArray((value as { data?: unknown }).data)) return [];
  const found: ModelEntry[] = [];
  for (const item of (value as { data: unknown[] }).data) {
    if (typeof item !== "object" || item === null) continue;
    const { id, status, progress, vision, tools } = item as Record<string, unknown>;
    if (typeof id !== "string") continue;
    const known = status === "loading" || status === "loaded" ? status : "unloaded";
    const fraction =
      known === "loading" && typeof progress === "number" && progress >= 0 && progress <= 1 ? progress : undefined;
    const entry: ModelEntry = fraction === undefined ? { id, status: known } : { id, status: known, progress: fraction };
    if (vision === true) entry.vision = true;
    if (tools === true) entry.tools = true;
    found.push(entry);
  }
  return found;
}

function storedChoice(): string | null {
  try {
    return window.localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

export class ModelPicker {
  private models: ModelEntry[] = [];
  /** Whether the broker lets this user unload a loaded model (`can_unload`: the owner, behind a router). */
  canUnload = false;
  private stopPolling: (() => void) | null = null;
  private readonly watchers = new Set<(model: ModelEntry | undefined) => void>();
  /** Called with the chosen model's entry whenever the choice or the list changes. */
  onChoice: (model: ModelEntry | undefined) => void = () => undefined;

  private readonly read: () => Promise<unknown>;

  constructor(private readonly select: HTMLSelectElement, url = "v1/models") {
    this.read = latestJson(url);
    select.addEventListener("change", () => {
      try {
        window.localStorage.setItem(STORAGE_KEY, select.value);
      } catch {
        // storage may be off (private mode): the choice then lasts for this page only
      }
      this.onChoice(this.entry(this.value));
    });
  }

  /** The chosen model, or undefined before the list arrived (the server's default is used then). */
  get value(): string | undefined {
    return this.select.value === "" ? undefined : this.select.value;
  }

  entry(id: string | undefined): ModelEntry | undefined {
    return this.models.find((model) => model.id === id);
  }

  /** Read the list and show it; an answer older than the one shown is dropped (`latestJson`). */
  async refresh(): Promise<void> {
    const body = await this.read();
    if (body === undefined) return;
    this.models = parseModels(body);
    this.canUnload = (body as { can_unload?: unknown } | null)?.can_unload === true;
    this.render();
  }

  private render(): void {
    const wanted = this.select.value || storedChoice();
    this.select.replaceChildren(
      ...this.models.map((model) => {
        const option = document.createElement("option");
        option.value = model.id;
        option.textContent = `${model.id} (${statusWords(model)})`;
        option.dataset.status = model.status;
        return option;
      }),
    );
    if (wanted !== null && this.models.some((model) => model.id === wanted)) this.select.value = wanted;
    this.select.hidden = this.models.length === 0;
    this.onChoice(this.entry(this.value));
  }

  /**
   * Poll the states while a reply waits (every 2 s, one poll for all watchers), so a load shows as
   * it happens; the returned function ends this watch, and the poll with the last one.
   */
  watch(onChange: (model: ModelEntry | undefined) => void): () => void {
    const watcher = (model: ModelEntry | undefined): void => onChange(model);
    this.watchers.add(watcher);
    this.stopPolling ??= pollEvery(async () => {
      await this.refresh();
      const model = this.entry(this.value);
      for (const each of this.watchers) each(model);
    });
    return () => {
      this.watchers.delete(watcher);
      if (this.watchers.size === 0 && this.stopPolling !== null) {
        this.stopPolling();
        this.stopPolling = null;
      }
    };
  }
}
