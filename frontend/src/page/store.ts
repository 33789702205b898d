/**
 * Conversations kept in the browser's IndexedDB, so a reload restores them. What is read back is
 * checked field by field (another tab, an older page or a user's devtools may have written it), and
 * a record that does not fit is skipped, never trusted.
 */
import type { Branch, TurnData } from "./conversation.ts";
import { type SettingsInput, settingsFrom } from "./settings.ts";

export interface SavedConversation {
  id: string;
  title: string;
  /** Milliseconds since the epoch of the last change; the list shows the newest first. */
  updated: number;
  turns: TurnData[];
  settings: SettingsInput;
}

export const DB_NAME = "llama-direct";

const MAX_ID_CHARS = 100;

/** Whether a conversation holds `query` (any case) in its title or any message or reply. */
export function matchesSearch(conversation: SavedConversation, query: string): boolean {
  const wanted = query.trim().toLowerCase();
  if (wanted === "") return true;
  const has = (text: string): boolean => text.toLowerCase().includes(wanted);
  return has(conversation.title) || conversation.turns.some((turn) => has(turn.text) || has(turn.reply));
}

/** The database of the user the broker named (its key in the page's meta tag): each user's own. */
export function dbNameFor(userKey: string): string {
  return /^[0-9a-f]{8,64}$/.test(userKey) ? `${DB_NAME}.${userKey}` : DB_NAME;
}
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

/** How deep branches may nest (a branch's later turns holding branches of their own). */
export const MAX_BRANCH_DEPTH = 16;

function validBranches(value: unknown, branch: unknown, depth: number): Pick<TurnData, "branches" | "branch"> {
  if (!Array.isArray(value) || value.length < 2 || depth >= MAX_BRANCH_DEPTH) return {};
  if (typeof branch !== "number" || !Number.isInteger(branch) || branch < 0 || branch >= value.length) return {};
  const branches: Branch[] = [];
  for (const each of value as unknown[]) {
    if (typeof each !== "object" || each === null) return {};
    const { reply, later } = each as Record<string, unknown>;
    if (!isString(reply) || !Array.isArray(later)) return {};
    const turns = later.map((turn) => validTurn(turn, depth + 1));
    if (turns.some((turn) => turn === null)) return {};
    branches.push({ reply, later: turns as TurnData[] });
  }
  return { branches, branch };
}

/** A turn, built afresh from the fields it may have (anything else is dropped); null when one is wrong.
 * Branches that do not fit are dropped and the turn kept. */
/** A conversation id as the broker mints them (a stored one that is not is dropped, never sent). */
const PENDING_ID = /^[A-Za-z0-9_-]{8,128}$/;

function validTurn(value: unknown, depth = 0): TurnData | null {
  if (typeof value !== "object" || value === null) return null;
  const { text, image, reply, branches, branch, pending } = value as Record<string, unknown>;
  if (!isString(text) || !isString(reply)) return null;
  if (image !== null && !(isString(image) && image.startsWith("data:image/"))) return null;
  const turn: TurnData = { text, image: image as string | null, reply, ...validBranches(branches, branch, depth) };
  if (isString(pending) && PENDING_ID.test(pending)) turn.pending = pending;
  return turn;
}

/** A stored record as a conversation, or null when any field does not fit. */
export function validConversation(value: unknown): SavedConversation | null {
  if (typeof value !== "object" || value === null) return null;
  const { id, title, updated, turns, settings } = value as Record<string, unknown>;
  if (!isString(id) || id === "" || id.length > MAX_ID_CHARS || !isString(title) || !Array.isArray(turns)) return null;
  if (typeof updated !== "number" || !Number.isFinite(updated)) return null;
  const checked = turns.map((turn) => validTurn(turn));
  if (checked.some((turn) => turn === null)) return null;
  const raw = (typeof settings === "object" && settings !== null ? settings : {}) as Record<string, unknown>;
  return {
    id,
    title: title.slice(0, TITLE_CHARS),
    updated,
    turns: checked as TurnData[],
    settings: settingsFrom(raw),
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

  /** Forget every conversation (a logout that asked for it). */
  async clear(): Promise<void> {
    await done(this.objects("readwrite").clear());
  }
}
