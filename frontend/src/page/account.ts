/**
 * The sidebar's foot: export and import of the conversations, and logging out, with the choice to
 * clear this user's conversations from the browser as well (kept per user in localStorage).
 */
import type { Conversations } from "./sidebar.ts";
import { exportDocument, exportName, mergeImport, MAX_IMPORT_BYTES, parseImport } from "./transfer.ts";

export const CLEAR_KEY = "llama-direct.clear-on-logout";

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

function stored(key: string): string | null {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

function store(key: string, value: string): void {
  try {
    window.localStorage.setItem(key, value);
  } catch {
    // storage may be off (private mode): the choice then lasts for this page only
  }
}

/** Save `text` as a file: a blob link clicked (no inline script, no data: URL). */
function download(name: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export class Account {
  private readonly clearOnLogout = byId<HTMLInputElement>("clear-on-logout");
  private readonly importFile = byId<HTMLInputElement>("import-file");

  constructor(
    private readonly conversations: Conversations,
    private readonly showNotice: (text: string) => void,
    private readonly userKey: string,
  ) {
    this.clearOnLogout.checked = stored(this.clearKey) === "1";
    this.clearOnLogout.addEventListener("change", () => store(this.clearKey, this.clearOnLogout.checked ? "1" : "0"));
    byId<HTMLButtonElement>("export").addEventListener("click", () => this.export());
    this.importFile.addEventListener("change", () => void this.import());
    byId<HTMLButtonElement>("logout").addEventListener("click", () => void this.logout());
  }

  private get clearKey(): string {
    return this.userKey === "" ? CLEAR_KEY : `${CLEAR_KEY}.${this.userKey}`;
  }

  private export(): void {
    const saved = this.conversations.saved();
    if (saved.length === 0) return this.showNotice("There is no conversation to export yet.");
    download(exportName(), JSON.stringify(exportDocument(saved)));
  }

  private async import(): Promise<void> {
    const file = this.importFile.files?.[0];
    this.importFile.value = "";
    if (file === undefined) return;
    // The size is checked before a byte is read: an import is never trusted.
    const result = parseImport(file.size > MAX_IMPORT_BYTES ? "" : await file.text(), file.size);
    if (!result.ok) return this.showNotice(result.reason);
    const added = mergeImport(this.conversations.saved(), result.conversations);
    await this.conversations.add(added);
    const already = result.conversations.length - added.length;
    const parts = [`Imported ${added.length} conversation${added.length === 1 ? "" : "s"}.`];
    if (already > 0) parts.push(`${already} already here.`);
    if (result.skipped > 0) parts.push(`${result.skipped} skipped as malformed.`);
    this.showNotice(parts.join(" "));
  }

  /** End the session at the broker, clear what the user asked to clear, and show the login page. */
  private async logout(): Promise<void> {
    try {
      await fetch("logout", { method: "POST", credentials: "same-origin" });
    } catch {
      return this.showNotice("Could not reach the server to log out. Try again.");
    }
    if (this.clearOnLogout.checked) await this.conversations.forget();
    window.location.assign("./");
  }
}
