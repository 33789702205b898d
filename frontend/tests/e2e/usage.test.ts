/**
 * A named user's token budget on the page, against the real stack in headless Chromium: a user added
 * with `llama-direct users add … --tokens-per-day` while `serve` runs logs in with their own link and
 * sees what their day has left drop after a reply that real llama-server generated; the owner, who has
 * no budget, sees no badge; the header still fits a 360 px phone.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { open, send, session, settled, WAIT_MS } from "./chat_page.ts";
import { artifact, launchBrowser, REPO, type Stack, startStack } from "./stack.ts";

const BUDGET = 5_000;
const PHONE = { width: 360, height: 760 };

let browser: Browser;
let stack: Stack;

beforeAll(async () => {
  browser = await launchBrowser();
  stack = await startStack(["--parallel", "1"]);
});

afterAll(async () => {
  await stack?.stop();
  await browser?.close();
});

/** Add a user with a daily token budget; their login link, printed once. */
function addUser(name: string): string {
  const printed = execFileSync(join(REPO, ".venv", "bin", "llama-direct"),
    ["users", "add", name, "--tokens-per-day", String(BUDGET), "--data-dir", stack.dataDir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const link = /^login link: (\S+)$/m.exec(printed)?.[1];
  if (link === undefined) throw new Error(`no login link in: ${printed}`);
  return link;
}

/** The number the badge shows as left (its tooltip holds the same, grouped). */
async function left(page: Page): Promise<number> {
  const title = (await page.locator("#usage").getAttribute("title")) ?? "";
  const [, remaining, budget] = /([\d,]+) of ([\d,]+) tokens left today/.exec(title) ?? [];
  if (remaining === undefined || budget === undefined) throw new Error(`no budget in: ${title}`);
  expect(Number(budget.replace(/,/g, ""))).toBe(BUDGET);
  return Number(remaining.replace(/,/g, ""));
}

describe("a user's token budget", () => {
  it("shows what the day has left, and less of it after a reply", async () => {
    const context = await browser.newContext({ viewport: PHONE });
    const login = await context.newPage();
    expect((await login.goto(addUser("alice")))?.status()).toBe(200);
    await login.close();
    const { page } = await open(context, stack);
    const badge = page.locator("#usage");
    await badge.waitFor({ state: "visible", timeout: WAIT_MS });
    expect(await left(page)).toBe(BUDGET);
    expect(await badge.locator(".visually-hidden").textContent()).toBe(
      `Your token budget: ${BUDGET.toLocaleString("en")} of ${BUDGET.toLocaleString("en")} tokens left today (0 used).`);

    expect(await settled(await send(page, "Say hello."))).toBe("done");
    // The badge is read again when the reply settles, and once more after the gate's end report.
    await page.waitForFunction((budget) => {
      const title = document.getElementById("usage")?.title ?? "";
      const used = /\(([\d,]+) used\)/.exec(title)?.[1];
      return used !== undefined && Number(used.replace(/,/g, "")) > 0 && title.includes(`of ${budget} tokens`);
    }, BUDGET.toLocaleString("en"), { timeout: WAIT_MS });
    const after = await left(page);
    expect(after).toBeLessThan(BUDGET);
    expect(Number((await badge.locator(".usage-left").textContent())?.replace(/,/g, ""))).toBe(after);

    const widths = await page.evaluate(() => ({
      doc: document.documentElement.scrollWidth,
      bar: document.querySelector(".bar")?.scrollWidth ?? 0,
    }));
    expect(widths.doc).toBeLessThanOrEqual(PHONE.width);
    expect(widths.bar).toBeLessThanOrEqual(PHONE.width);
    const box = await badge.boundingBox();
    expect((box?.x ?? 0) + (box?.width ?? 0)).toBeLessThanOrEqual(PHONE.width);
    await page.screenshot({ path: artifact("page-phone-usage.png") });
    await context.close();
  });

  it("shows no budget to the owner, who has none", async () => {
    const context = await session(browser, stack);
    const isUsage = (url: string): boolean => new URL(url).pathname.endsWith("/v1/usage");
    const read = context.waitForEvent("response", { predicate: (response) => isUsage(response.url()), timeout: WAIT_MS });
    const { page, requests } = await open(context, stack);
    const answer = await read;
    expect(answer.status()).toBe(200);
    expect(await answer.json()).toMatchObject({ sub: "local", tokens_per_day: null, tokens_per_minute: null });
    // Idle: nothing polls it (and the one read has long been shown by then).
    const reads = requests.filter((request) => isUsage(request.url())).length;
    await page.waitForTimeout(4_000);
    expect(requests.filter((request) => isUsage(request.url())).length).toBe(reads);
    expect(await page.locator("#usage").isHidden()).toBe(true);
    await context.close();
  });
});
