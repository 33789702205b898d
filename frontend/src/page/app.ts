/**
 * The demo chat at `/`. Every path it uses is relative, so a reverse proxy's path prefix works.
 */
import { type ChatMessage, streamChat } from "../client.ts";
import { ModelPicker } from "./models.ts";
import { tokensFlow } from "./poll.ts";
import { ReplyView } from "./reply.ts";
import { EXECUTORS, TOOL_SPECS } from "./tools.ts";

/** An image larger than this is refused here rather than sent as an oversized body. */
const MAX_IMAGE_BYTES = 8 * 1024 * 1024;

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

function readAsDataUrl(file: File): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error("unreadable image"));
    reader.readAsDataURL(file);
  });
}

function start(): void {
  const form = byId<HTMLFormElement>("composer");
  const prompt = byId<HTMLTextAreaElement>("prompt");
  const send = byId<HTMLButtonElement>("send");
  const stop = byId<HTMLButtonElement>("stop");
  const list = byId<HTMLOListElement>("messages");
  const empty = byId<HTMLParagraphElement>("empty");
  const notice = byId<HTMLParagraphElement>("notice");
  const laneBadge = byId<HTMLSpanElement>("lane");
  const tpsBadge = byId<HTMLSpanElement>("tps");
  const picker = new ModelPicker(byId<HTMLSelectElement>("model"));
  void picker.refresh();
  const imageInput = byId<HTMLInputElement>("image");
  const attachment = byId<HTMLSpanElement>("attachment");
  const preview = byId<HTMLImageElement>("attachment-preview");
  const attachmentName = byId<HTMLSpanElement>("attachment-name");
  const removeAttachment = byId<HTMLButtonElement>("attachment-remove");
  const toolsToggle = byId<HTMLInputElement>("tools");

  const history: ChatMessage[] = [];
  let image: string | null = null;
  let controller: AbortController | null = null;

  const showNotice = (text: string): void => {
    notice.textContent = text;
    notice.hidden = text === "";
  };

  const clearImage = (): void => {
    image = null;
    imageInput.value = "";
    attachment.hidden = true;
    preview.removeAttribute("src");
  };

  imageInput.addEventListener("change", async () => {
    const file = imageInput.files?.[0];
    if (file === undefined) return clearImage();
    if (file.size > MAX_IMAGE_BYTES) {
      showNotice("That image is larger than 8 MB. Pick a smaller one.");
      return clearImage();
    }
    try {
      image = await readAsDataUrl(file);
    } catch {
      showNotice("That image could not be read.");
      return clearImage();
    }
    preview.src = image;
    attachmentName.textContent = file.name;
    attachment.hidden = false;
  });
  removeAttachment.addEventListener("click", () => {
    clearImage();
    imageInput.focus();
  });

  const addUserMessage = (text: string, imageUrl: string | null): void => {
    const item = document.createElement("li");
    item.className = "msg user";
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = "You";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    if (imageUrl !== null) {
      const thumb = document.createElement("img");
      thumb.className = "thumb";
      thumb.src = imageUrl;
      thumb.alt = "Attached image";
      item.append(thumb);
    }
    list.append(item);
  };

  const setBusy = (busy: boolean): void => {
    send.disabled = busy;
    stop.disabled = !busy;
    list.setAttribute("aria-busy", String(busy));
  };

  async function submit(): Promise<void> {
    const text = prompt.value.trim();
    if (text === "" || controller !== null) return;
    const imageUrl = image;
    const content: ChatMessage["content"] =
      imageUrl === null
        ? text
        : [
            { type: "text", text },
            { type: "image_url", image_url: { url: imageUrl } },
          ];
    history.push({ role: "user", content });
    empty.hidden = true;
    addUserMessage(text, imageUrl);
    prompt.value = "";
    clearImage();
    showNotice("");

    const reply = new ReplyView();
    list.append(reply.root);
    reply.root.scrollIntoView({ block: "end" });
    controller = new AbortController();
    setBusy(true);
    const useTools = toolsToggle.checked;
    const model = picker.value;
    if (model !== undefined) reply.showModel(model);
    let unwatch: (() => void) | null = picker.watch((entry) => {
      if (model !== undefined) reply.showModelLoading(model, entry?.status === "loading", entry?.progress);
    });
    const stopWatching = (): void => {
      unwatch?.();
      unwatch = null;
    };
    try {
      const events = streamChat(
        { messages: [...history], ...(useTools ? { tools: TOOL_SPECS } : {}) },
        {
          signal: controller.signal,
          resumable: true,
          ...(model !== undefined ? { model } : {}),
          ...(useTools ? { tools: EXECUTORS } : {}),
        },
      );
      for await (const event of events) {
        // Tokens flow: the model is loaded, and the picker's poll has nothing left to show.
        if (tokensFlow(event)) stopWatching();
        if (event.type === "notice") showNotice(event.message);
        else if (event.type === "text_delta" || event.type === "reasoning_start") showNotice("");
        reply.apply(event);
        if (event.type === "timings" && reply.tokensPerSecond !== null) {
          tpsBadge.textContent = reply.tokensPerSecond.toFixed(1);
        }
        if (event.type === "finish") {
          laneBadge.textContent = event.lane;
          laneBadge.dataset.lane = event.lane;
        }
        reply.root.scrollIntoView({ block: "end" });
      }
    } finally {
      stopWatching();
      controller = null;
      setBusy(false);
      if (reply.content !== "") history.push({ role: "assistant", content: reply.content });
      else history.pop();
      prompt.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void submit();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      void submit();
    }
  });
  const stopReply = (): void => controller?.abort();
  stop.addEventListener("click", stopReply);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stopReply();
  });
  prompt.focus();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
