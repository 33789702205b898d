/**
 * The logged-in user's token budget in the header (`GET /v1/usage`): what is left today (or this
 * minute, for a user with only a per-minute limit), with the whole account in its tooltip and in words
 * for a screen reader. Read when the page opens and after each reply settles, never polled while
 * idle. The owner and users without token limits see nothing: they have no budget to run out of.
 */
import { MY_USAGE_PATH, type MyUsage } from "../documents.ts";
import { latestJson } from "./get_json.ts";

/** What the badge shows: the number left, which window it is, the whole account in a sentence. */
export interface UsageShown {
  left: string;
  window: "today" | "this minute";
  sentence: string;
  /** Nothing left in the shown window: a reply would be refused until it turns over. */
  out: boolean;
}

/** After a reply settles, its gate's end report may still be on its way to the broker (until then the
 * grant's whole reservation counts as used): one more read this long after shows what it settled at. */
export const SETTLE_REREAD_MS = 3_000;

const count = (value: unknown): value is number => typeof value === "number" && Number.isInteger(value) && value >= 0;
const bound = (value: unknown): value is number | null => value === null || count(value);

/** The document's numbers, checked (it crosses the network): null for a body of another shape. */
export function parseUsage(raw: unknown): MyUsage | null {
  if (typeof raw !== "object" || raw === null) return null;
  const doc = raw as Record<string, unknown>;
  const ok =
    bound(doc.tokens_per_day) && bound(doc.tokens_per_minute) && count(doc.day_used) && bound(doc.day_left) &&
    count(doc.minute_used) && bound(doc.minute_left) && Array.isArray(doc.rows);
  return ok ? (doc as unknown as MyUsage) : null;
}

const GROUPED = new Intl.NumberFormat("en");
const COMPACT = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

/** A token count short enough for a phone's header: `950`, `9,500`, `95K`, `1.2M`. */
export function tokens(value: number): string {
  return value < 10_000 ? GROUPED.format(value) : COMPACT.format(value);
}

/** What the badge says for `usage`, or null where the user has no token limit (nothing to show). */
export function usageShown(usage: MyUsage): UsageShown | null {
  const parts: string[] = [];
  if (usage.tokens_per_day !== null && usage.day_left !== null) {
    parts.push(`${GROUPED.format(usage.day_left)} of ${GROUPED.format(usage.tokens_per_day)} tokens left today ` +
      `(${GROUPED.format(usage.day_used)} used)`);
  }
  if (usage.tokens_per_minute !== null && usage.minute_left !== null) {
    parts.push(`${GROUPED.format(usage.minute_left)} of ${GROUPED.format(usage.tokens_per_minute)} left this minute`);
  }
  if (parts.length === 0) return null;
  const daily = usage.day_left !== null;
  const left = (daily ? usage.day_left : usage.minute_left) ?? 0;
  return { left: tokens(left), window: daily ? "today" : "this minute", sentence: `Your token budget: ${parts.join("; ")}.`, out: left === 0 };
}

/** The header's badge: `refresh()` reads the document and shows it; `settled()` after each reply. */
export class UsageBadge {
  private reread: ReturnType<typeof setTimeout> | undefined;
  private readonly read: () => Promise<unknown>;

  constructor(
    private readonly node: HTMLElement,
    url = MY_USAGE_PATH.replace(/^\//, ""),
  ) {
    this.read = latestJson(url);
  }

  async refresh(): Promise<void> {
    const body = await this.read();
    if (body === undefined) return;
    const usage = parseUsage(body);
    this.show(usage === null ? null : usageShown(usage));
  }

  /** A reply settled: read now, and once more when its end report has surely reached the broker. */
  settled(): void {
    clearTimeout(this.reread);
    void this.refresh();
    this.reread = setTimeout(() => void this.refresh(), SETTLE_REREAD_MS);
  }

  private show(shown: UsageShown | null): void {
    this.node.hidden = shown === null;
    if (shown === null) return;
    const number = document.createElement("span");
    number.className = "usage-left";
    number.textContent = shown.left;
    number.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "badge-label";
    label.setAttribute("aria-hidden", "true");
    label.textContent = `left ${shown.window}`;
    const words = document.createElement("span");
    words.className = "visually-hidden";
    words.textContent = shown.sentence;
    this.node.replaceChildren(words, number, label);
    this.node.title = shown.sentence;
    this.node.dataset.out = String(shown.out);
  }
}
