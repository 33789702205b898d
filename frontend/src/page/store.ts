/**
 * Conversations kept in the browser's IndexedDB, so a reload restores them. What is read back is
 * checked field by field (another tab, an older page or a user's devtools may have written it), and
 * a record that does not fit is skipped, never trusted.
 */
import type { TurnData } from "./conversation.ts";
import type { SettingsInput } from "./settings.ts";

export interface SavedConversation {
  id: string;
  title: string;
  /** Milliseconds since the epoch of the last change; the list shows the newest first. */
  updated: number;
  turns: TurnData[];
  settings: SettingsInput;
}

export const DB_NAME = "llama-direct";
const STORE = "conversations";
export const TITLE_CHARS = 60;
/** A record larger than this (mostly images) is not kept: the store is a convenience, not an archive. */
export const MAX_RECORD_CHARS = 32 * 1024 * 1024;

/** A conversation's title: its first message, on one line, cut to a readable length. */
export function titleFor(turns: readonly TurnData[]): string {
  const first = (turns[0]?.text ?? "").replace(/\s+/g, " ").trim();
  if (first === "") return "New chat";
  return first.length > TITLE_CHARS ? `${first.slice(0, TITLE_CHARS - 1)}…` : first;
}

const isString = (value: unknown): value is string => typeof value === "string";

function validTurn(value: unknown): TurnData | null {
  if (typeof value !== "object" || value === null) return null;
  const { text, image, reply } = value as Record<string, unknown>;
  if (!isString(text) || !isString(reply)) return null;
  if (image !== null && !(isString(image) && image.startsWith("data:image/"))) return null;
  return { text, image: image as string | null, reply };
}

/** A stored record as a conversation, or null when any field does not fit. */
export function validConversation(value: unknown): SavedConversation | null {
  if (typeof value !== "object" || value === null) return null;
  const { id, title, updated, turns, settings } = value as Record<string, unknown>;
  if (!isString(id) || !isString(title) || typeof updated !== "number" || !Array.isArray(turns)) return null;
  const checked = turns.map(validTurn);
  if (checked.some((turn) => turn === null)) return null;
  const raw = (typeof settings === "object" && settings !== null ? settings : {}) as Record<string, unknown>;
  const field = (name: string): string => (isString(raw[name]) ? (raw[name] as string) : "");
  return {
    id,
    title: title.slice(0, TITLE_CHARS),
    updated,
    turns: checked as TurnData[],
    settings: { system: field("system"), temperature: field("temperature"), maxTokens: field("maxTokens") },
  };
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error("IndexedDB request failed"));
  });
}

export class ConversationStore {
  private constructor(private readonly db: IDBDatabase) {}

  /** The store, or null where IndexedDB is off (private mode, a refused permission). */
  static async open(name = DB_NAME): Promise<ConversationStore | null> {
    try {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      return new ConversationStore(await done(request));
    } catch {
      return null;
    }
  }

  private objects(mode: IDBTransactionMode): IDBObjectStore {
    return this.db.transaction(STORE, mode).objectStore(STORE);
  }

  /** Every valid conversation, newest first. */
  async list(): Promise<SavedConversation[]> {
    const all = (await done(this.objects("readonly").getAll())) as unknown[];
    return all
      .map(validConversation)
      .filter((each): each is SavedConversation => each !== null)
      .sort((a, b) => b.updated - a.updated);
  }

  /** Keep a conversation; false when it is too large to keep. */
  async put(conversation: SavedConversation): Promise<boolean> {
    if (JSON.stringify(conversation).length > MAX_RECORD_CHARS) return false;
    await done(this.objects("readwrite").put(conversation));
    return true;
  }

  async delete(id: string): Promise<void> {
    await done(this.objects("readwrite").delete(id));
  }
}
