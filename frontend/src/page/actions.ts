/**
 * Message action buttons (copy, edit, regenerate, retry, a code block's copy, loading a remote
 * image): plain buttons with `data-action`, handled by one delegated listener, so no handler is ever
 * attached to model output and nothing inline runs (the page's CSP forbids it).
 */
import { safeLinkUrl, IMAGE_PROTOCOLS } from "./markdown.ts";

export type MessageAction = "copy" | "edit" | "regenerate" | "retry" | "branch-prev" | "branch-next";

const LABELS: Record<MessageAction, [text: string, label: string]> = {
  copy: ["Copy", "Copy this message"],
  edit: ["Edit", "Edit this message and send it again"],
  regenerate: ["Regenerate", "Answer this message again"],
  retry: ["Retry", "Send this message again"],
  "branch-prev": ["‹", "Show the previous answer"],
  "branch-next": ["›", "Show the next answer"],
};

export function actionButton(action: MessageAction): HTMLButtonElement {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action";
  button.dataset.action = action;
  const [text, label] = LABELS[action];
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.title = label;
  return button;
}

export function actionBar(...actions: MessageAction[]): HTMLDivElement {
  const bar = document.createElement("div");
  bar.className = "actions";
  bar.append(...actions.map(actionButton));
  return bar;
}

/** The switcher between a message's answers (`‹ 2/3 ›`), kept by Regenerate. */
export function branchNav(index: number, count: number): HTMLSpanElement {
  const nav = document.createElement("span");
  nav.className = "branches";
  const prev = actionButton("branch-prev");
  prev.disabled = index === 0;
  const where = document.createElement("span");
  where.className = "branch-count";
  where.textContent = `${index + 1}/${count}`;
  where.title = `Answer ${index + 1} of ${count}`;
  const next = actionButton("branch-next");
  next.disabled = index === count - 1;
  nav.append(prev, where, next);
  return nav;
}

/** Copy text: the async Clipboard API, or the old selection trick where that is refused. */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

/** Say "Copied" on the button for a moment. */
export async function copyWithFeedback(button: HTMLButtonElement, text: string): Promise<void> {
  const before = button.textContent;
  button.textContent = (await copyText(text)) ? "Copied" : "Copy failed";
  setTimeout(() => (button.textContent = before), 1500);
}

/** A remote image's placeholder, clicked: the image loads now, without a referrer. */
export function loadImage(button: HTMLButtonElement): void {
  const url = safeLinkUrl(button.dataset.src ?? null, IMAGE_PROTOCOLS);
  if (url === null) return;
  const img = document.createElement("img");
  img.referrerPolicy = "no-referrer";
  img.alt = button.dataset.alt ?? "";
  img.src = url.href;
  img.className = "remote";
  button.replaceWith(img);
}

/** Handle the content actions (a code block's copy, a remote image) inside `root`. */
export function bindContentActions(root: HTMLElement): void {
  root.addEventListener("click", (event) => {
    const button = (event.target as Element | null)?.closest<HTMLButtonElement>("button[data-action]");
    if (button === null || button === undefined) return;
    if (button.dataset.action === "copy-code") {
      const code = button.closest(".codeblock")?.querySelector("code");
      void copyWithFeedback(button, code?.textContent ?? "");
    } else if (button.dataset.action === "load-image") loadImage(button);
  });
}
