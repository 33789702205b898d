/**
 * Export and import of conversations as one JSON file. An import is someone's file, never trusted: it
 * is bounded in size and count before it is parsed, each conversation is rebuilt field by field by
 * the store's own check (`validConversation`, which drops every field it does not know), and one that
 * does not fit is skipped and counted.
 */
import { type SavedConversation, validConversation } from "./store.ts";

export const FORMAT = "llama-direct.conversations";
export const VERSION = 1;
/** The largest file an import reads: conversations with images are large, but this is not an archive. */
export const MAX_IMPORT_BYTES = 64 * 1024 * 1024;
export const MAX_IMPORT_CONVERSATIONS = 10_000;

export interface ExportDocument {
  format: typeof FORMAT;
  version: typeof VERSION;
  exported: string;
  conversations: SavedConversation[];
}

export function exportDocument(conversations: readonly SavedConversation[], now = new Date()): ExportDocument {
  return { format: FORMAT, version: VERSION, exported: now.toISOString(), conversations: [...conversations] };
}

export type ImportResult = { ok: true; conversations: SavedConversation[]; skipped: number } | { ok: false; reason: string };

const refused = (reason: string): ImportResult => ({ ok: false, reason });

/** An import file's text, read as conversations; `size` is the file's size, checked before parsing. */
export function parseImport(text: string, size = text.length): ImportResult {
  if (size > MAX_IMPORT_BYTES) return refused(`That file is larger than ${MAX_IMPORT_BYTES / 1024 / 1024} MB.`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return refused("That file is not JSON.");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return refused("That file is not a conversations export.");
  const { format, version, conversations } = value as Record<string, unknown>;
  if (format !== FORMAT || !Array.isArray(conversations)) return refused("That file is not a conversations export.");
  if (version !== VERSION) return refused("That export is from a version of this page that cannot be read here.");
  if (conversations.length > MAX_IMPORT_CONVERSATIONS) return refused(`That file holds more than ${MAX_IMPORT_CONVERSATIONS} conversations.`);
  const found: SavedConversation[] = [];
  for (const each of conversations as unknown[]) {
    const conversation = validConversation(each);
    if (conversation !== null) found.push(conversation);
  }
  return { ok: true, conversations: found, skipped: conversations.length - found.length };
}

/**
 * What an import adds to the conversations here: one not here yet, or newer than the one here with
 * its id; the rest are already here.
 */
export function mergeImport(here: readonly SavedConversation[], incoming: readonly SavedConversation[]): SavedConversation[] {
  const updated = new Map(here.map((each) => [each.id, each.updated]));
  return incoming.filter((each) => (updated.get(each.id) ?? -Infinity) < each.updated);
}

/** A file name for today's export. */
export function exportName(now = new Date()): string {
  return `llama-direct-conversations-${now.toISOString().slice(0, 10)}.json`;
}
