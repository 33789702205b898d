/**
 * The message box and what goes with it: it grows with its text (up to a bound, then scrolls), and
 * holds at most one attached image, offered only when the chosen model reads images: picked, pasted
 * or dropped on the box.
 */

/** An image larger than this is refused here rather than sent as an oversized body. */
export const MAX_IMAGE_BYTES = 8 * 1024 * 1024;

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

/** The first image file a paste or a drop carries, if any. */
export function imageIn(data: DataTransfer | null): File | undefined {
  return Array.from(data?.files ?? []).find((file) => file.type.startsWith("image/"));
}

function readAsDataUrl(file: File): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error("unreadable image"));
    reader.readAsDataURL(file);
  });
}

export class Composer {
  readonly prompt = byId<HTMLTextAreaElement>("prompt");
  private readonly imageInput = byId<HTMLInputElement>("image");
  private readonly attachButton = byId<HTMLLabelElement>("attach");
  private readonly attachment = byId<HTMLSpanElement>("attachment");
  private readonly preview = byId<HTMLImageElement>("attachment-preview");
  private readonly attachmentName = byId<HTMLSpanElement>("attachment-name");
  image: string | null = null;

  constructor(private readonly showNotice: (text: string) => void) {
    this.prompt.addEventListener("input", () => this.fit());
    this.imageInput.addEventListener("change", () => void this.attach(this.imageInput.files?.[0]));
    this.prompt.addEventListener("paste", (event) => {
      const file = imageIn(event.clipboardData);
      if (file === undefined) return;
      event.preventDefault();
      void this.attach(file);
    });
    const form = byId<HTMLFormElement>("composer");
    form.addEventListener("dragover", (event) => {
      if (!event.dataTransfer?.types.includes("Files")) return;
      event.preventDefault();
      form.classList.add("dropping");
    });
    form.addEventListener("dragleave", () => form.classList.remove("dropping"));
    form.addEventListener("drop", (event) => {
      form.classList.remove("dropping");
      const file = imageIn(event.dataTransfer);
      if (file === undefined) return;
      event.preventDefault();
      void this.attach(file);
    });
    byId<HTMLButtonElement>("attachment-remove").addEventListener("click", () => {
      this.clearImage();
      this.imageInput.focus();
    });
  }

  get text(): string {
    return this.prompt.value.trim();
  }

  /** Put text in the box and fit the box to it; cleared, the box takes its CSS height again, with no
   * layout read (a Send clears it, and that click's frame must stay short). */
  setText(text: string): void {
    this.prompt.value = text;
    if (text === "") this.prompt.style.height = "";
    else this.fit();
  }

  /** Grow with the text: the box's height follows its content, up to the CSS max-height. */
  fit(): void {
    this.prompt.style.height = "auto";
    this.prompt.style.height = `${this.prompt.scrollHeight + 2}px`;
  }

  /** Offer "Attach image" only for a model that reads images (an attached image stays removable). */
  offerImages(vision: boolean): void {
    this.attachButton.hidden = !vision;
  }

  clearImage(): void {
    this.image = null;
    this.imageInput.value = "";
    this.attachment.hidden = true;
    this.preview.removeAttribute("src");
  }

  /** Whether images are offered now (the chosen model reads them). */
  get takesImages(): boolean {
    return !this.attachButton.hidden;
  }

  private async attach(file: File | undefined): Promise<void> {
    if (file === undefined) return this.clearImage();
    if (!this.takesImages) return this.showNotice("The chosen model does not read images.");
    if (file.size > MAX_IMAGE_BYTES) {
      this.showNotice("That image is larger than 8 MB. Pick a smaller one.");
      return this.clearImage();
    }
    try {
      this.image = await readAsDataUrl(file);
    } catch {
      this.showNotice("That image could not be read.");
      return this.clearImage();
    }
    this.preview.src = this.image;
    this.attachmentName.textContent = file.name;
    this.attachment.hidden = false;
  }
}
