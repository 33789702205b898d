/**
 * The user's message in the conversation: its text (never parsed), its image, Copy and Edit, and the
 * inline editor that Edit opens (its own labelled text box, "Send" and "Cancel").
 */
import { actionBar } from "./actions.ts";

export function userMessage(text: string, image: string | null): HTMLLIElement {
  const item = document.createElement("li");
  item.className = "msg user";
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = "You";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  if (image !== null) {
    const thumb = document.createElement("img");
    thumb.className = "thumb";
    thumb.src = image;
    thumb.alt = "Attached image";
    item.append(thumb);
  }
  item.append(actionBar("copy", "edit"));
  return item;
}

let editors = 0;

/**
 * Open the editor on a user message: `onSend` gets the new text (the message shows it), Cancel or
 * Escape puts the message back as it was.
 */
export function openEditor(item: HTMLLIElement, text: string, onSend: (text: string) => void): void {
  if (item.querySelector("form.edit") !== null) return;
  const shown = Array.from(item.children).filter((child) => !child.classList.contains("who"));
  const form = document.createElement("form");
  form.className = "edit";
  const id = `edit-${(editors += 1)}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.className = "visually-hidden";
  label.textContent = "Edit your message";
  const area = document.createElement("textarea");
  area.id = id;
  area.value = text;
  area.rows = Math.min(12, Math.max(2, text.split("\n").length));
  const row = document.createElement("div");
  row.className = "edit-row";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "button";
  cancel.textContent = "Cancel";
  const send = document.createElement("button");
  send.type = "submit";
  send.className = "button primary";
  send.textContent = "Send";
  row.append(cancel, send);
  form.append(label, area, row);
  for (const child of shown) (child as HTMLElement).hidden = true;
  item.append(form);
  area.focus();
  const close = (): void => {
    form.remove();
    for (const child of shown) (child as HTMLElement).hidden = false;
  };
  cancel.addEventListener("click", close);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = area.value.trim();
    if (next === "") return;
    close();
    const body = item.querySelector<HTMLElement>(":scope > .text");
    if (body !== null) body.textContent = next;
    onSend(next);
  });
}
