/**
 * The conversations: a sidebar listing them (newest first) with New, open, rename, delete and search,
 * kept in IndexedDB so a reload restores them. The conversation shown is the newest at load.
 */
import type { Chat } from "./chat.ts";
import { blankSettings, type SettingsPanel } from "./settings.ts";
import { ConversationStore, matchesSearch, type SavedConversation, titleFor } from "./store.ts";

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

const newId = (): string =>
  typeof crypto.randomUUID === "function" ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;

export class Conversations {
  private readonly list = byId<HTMLUListElement>("conversations");
  private readonly sidebar = byId<HTMLElement>("sidebar");
  private readonly search = byId<HTMLInputElement>("search");
  private readonly noMatch = byId<HTMLParagraphElement>("no-match");
  private all: SavedConversation[] = [];
  private current: SavedConversation = this.blank();

  constructor(
    private readonly store: ConversationStore | null,
    private readonly chat: Chat,
    private readonly settings: SettingsPanel,
  ) {
    chat.onChange = () => void this.save();
    settings.onInput(() => void this.save());
    byId<HTMLButtonElement>("new-chat").addEventListener("click", () => void this.open(null));
    byId<HTMLButtonElement>("sidebar-toggle").addEventListener("click", () => this.toggle());
    this.search.addEventListener("input", () => this.render());
    this.list.addEventListener("click", (event) => {
      const button = (event.target as Element | null)?.closest<HTMLButtonElement>("button[data-id]");
      if (button === null || button === undefined) return;
      const id = button.dataset.id ?? "";
      if (button.dataset.action === "delete") void this.remove(id);
      else if (button.dataset.action === "rename") this.rename(id);
      else void this.open(id);
    });
  }

  private blank(): SavedConversation {
    return { id: newId(), title: "New chat", updated: Date.now(), turns: [], settings: blankSettings() };
  }

  /** Read the stored conversations and show the newest. */
  async restore(): Promise<void> {
    this.all = (await this.store?.list().catch(() => [])) ?? [];
    const newest = this.all[0];
    // A message sent before the store answered wins over the stored conversation.
    if (newest !== undefined && this.chat.length === 0) this.show(newest);
    this.render();
  }

  private show(conversation: SavedConversation): void {
    this.current = conversation;
    this.chat.load(conversation.turns);
    this.settings.write(conversation.settings);
    byId<HTMLElement>("empty").hidden = conversation.turns.length > 0;
  }

  private async open(id: string | null): Promise<void> {
    await this.chat.idle();
    const found = this.all.find((each) => each.id === id);
    this.show(found ?? this.blank());
    this.render();
    this.sidebar.classList.remove("open");
  }

  private async save(): Promise<void> {
    const turns = this.chat.snapshot();
    if (turns.length === 0) return;
    const keepTitle = this.current.title !== titleFor(this.current.turns) && this.current.turns.length > 0;
    this.current = {
      ...this.current,
      turns,
      settings: this.settings.raw(),
      updated: Date.now(),
      title: keepTitle ? this.current.title : titleFor(turns),
    };
    this.all = [this.current, ...this.all.filter((each) => each.id !== this.current.id)];
    this.render();
    await this.store?.put(this.current).catch(() => false);
  }

  private rename(id: string): void {
    const found = this.all.find((each) => each.id === id);
    if (found === undefined) return;
    const title = window.prompt("Rename the conversation", found.title)?.replace(/\s+/g, " ").trim();
    if (title === undefined || title === "") return;
    found.title = title.slice(0, 60);
    this.render();
    void this.store?.put(found).catch(() => false);
  }

  private async remove(id: string): Promise<void> {
    const found = this.all.find((each) => each.id === id);
    if (found === undefined || !window.confirm(`Delete “${found.title}”?`)) return;
    this.all = this.all.filter((each) => each.id !== id);
    await this.store?.delete(id).catch(() => undefined);
    if (this.current.id === id) await this.open(null);
    else this.render();
  }

  private toggle(): void {
    this.sidebar.classList.toggle("open");
  }

  /** Every conversation kept, newest first (for an export). */
  saved(): SavedConversation[] {
    return [...this.all];
  }

  /** Keep imported conversations (already checked and merged) and list them. */
  async add(conversations: readonly SavedConversation[]): Promise<void> {
    const ids = new Set(conversations.map((each) => each.id));
    this.all = [...conversations, ...this.all.filter((each) => !ids.has(each.id))].sort((a, b) => b.updated - a.updated);
    for (const conversation of conversations) await this.store?.put(conversation).catch(() => false);
    const current = conversations.find((each) => each.id === this.current.id);
    if (current !== undefined) await this.open(current.id);
    else this.render();
  }

  /** Forget every conversation here and in the store (a logout that asked for it). */
  async forget(): Promise<void> {
    await this.chat.idle();
    this.all = [];
    await this.store?.clear().catch(() => undefined);
  }

  private render(): void {
    const query = this.search.value;
    const shown = this.all.filter((conversation) => matchesSearch(conversation, query));
    this.list.replaceChildren(...shown.map((conversation) => this.item(conversation)));
    this.noMatch.hidden = shown.length > 0 || query.trim() === "";
  }

  private item(conversation: SavedConversation): HTMLLIElement {
    const item = document.createElement("li");
    if (conversation.id === this.current.id) item.setAttribute("aria-current", "true");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.dataset.id = conversation.id;
    open.textContent = conversation.title;
    open.title = conversation.title;
    item.append(open);
    for (const [action, word] of [["rename", "Rename"], ["delete", "Delete"]] as const) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small";
      button.dataset.id = conversation.id;
      button.dataset.action = action;
      button.textContent = action === "rename" ? "✎" : "×";
      button.setAttribute("aria-label", `${word} “${conversation.title}”`);
      button.title = word;
      item.append(button);
    }
    return item;
  }
}
