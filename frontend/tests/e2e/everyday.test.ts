/**
 * What a user comes back to every day, against the real stack in headless Chromium: regenerate keeping
 * the earlier answer as a branch (across a reload), search in the sidebar, export and import as JSON
 * (an import checked, never trusted), the theme toggle, and logging out with the conversations cleared
 * onto the styled login page.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fulfilWith, open, send, session, settled, stored, WAIT_MS } from "./chat_page.ts";
import { ARTIFACTS, artifact, launchBrowser, type Stack, startStack } from "./stack.ts";

const LANE = "**/direct/v1/chat/completions";
const DESKTOP = { width: 1280, height: 800 };

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

/** Answer the next lane request with `text` (in llama-server's own chunks). */
async function answerWith(page: Page, text: string): Promise<void> {
  await page.unroute(LANE);
  await page.route(LANE, fulfilWith(text));
}

async function converse(page: Page, message: string, answer: string): Promise<void> {
  await answerWith(page, answer);
  expect(await settled(await send(page, message))).toBe("done");
}

const titles = (page: Page): Promise<string[]> => page.locator("#conversations .open").allTextContents();

describe("everyday use", () => {
  let context: BrowserContext;
  beforeAll(async () => {
    context = await session(browser, stack, DESKTOP);
  });
  afterAll(async () => context?.close());

  it("regenerate keeps the earlier answer as a branch to flip back to, across a reload", async () => {
    const { page } = await open(context, stack, null);
    await converse(page, "Pick a fruit.", "An **apple**.");
    await answerWith(page, "A *pear*.");
    await page.click('li.assistant .actions button[data-action="regenerate"]');
    const reply = page.locator("li.assistant").first();
    expect(await settled(reply)).toBe("done");
    expect(await reply.locator(".branch-count").textContent()).toBe("2/2");
    expect((await reply.locator(".markdown").textContent())?.trim()).toBe("A pear.");
    await page.click('li.assistant button[data-action="branch-prev"]');
    expect(await page.locator("li.assistant .branch-count").textContent()).toBe("1/2");
    expect((await page.locator("li.assistant .markdown").textContent())?.trim()).toBe("An apple.");
    expect(await page.locator('li.assistant button[data-action="branch-prev"]').isDisabled()).toBe(true);
    await page.screenshot({ path: artifact("page-desktop-branches.png") });
    await expect.poll(() => stored(page), { timeout: WAIT_MS }).toContain('"branch":0');
    await page.reload();
    await page.locator("li.assistant .branch-count").waitFor({ timeout: WAIT_MS });
    expect(await page.locator("li.assistant .branch-count").textContent()).toBe("1/2");
    await page.click('li.assistant button[data-action="branch-next"]');
    expect((await page.locator("li.assistant .markdown").textContent())?.trim()).toBe("A pear.");
    await page.close();
  });

  it("searches the conversations by title and by what was said", async () => {
    const { page } = await open(context, stack, null);
    await converse(page, "Tell me about llamas.", "They live in the Andes.");
    await page.click("#new-chat");
    await converse(page, "Tell me about whales.", "They sing.");
    expect(await titles(page)).toEqual(["Tell me about whales.", "Tell me about llamas."]);
    await page.fill("#search", "ANDES");
    expect(await titles(page)).toEqual(["Tell me about llamas."]);
    await page.fill("#search", "whale");
    expect(await titles(page)).toEqual(["Tell me about whales."]);
    await page.fill("#search", "octopus");
    expect(await titles(page)).toEqual([]);
    expect(await page.isVisible("#no-match")).toBe(true);
    await page.fill("#search", "");
    expect(await titles(page)).toHaveLength(2);
    await page.close();
  });

  it("exports the conversations as JSON and imports them back, skipping what does not fit", async () => {
    const { page } = await open(context, stack, null);
    await converse(page, "First export.", "One.");
    await page.click("#new-chat");
    await converse(page, "Second export.", "Two, with `code`.");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
    const file = join(ARTIFACTS, "export.json");
    await download.saveAs(file);
    const exported = JSON.parse(readFileSync(file, "utf8")) as { format: string; conversations: { title: string }[] };
    expect(exported.format).toBe("llama-direct.conversations");
    expect(exported.conversations.map((each) => each.title)).toEqual(["Second export.", "First export."]);

    // A fresh browser profile, and a file someone edited: an unknown field, a malformed conversation.
    const other = await session(browser, stack, DESKTOP);
    const fresh = (await open(other, stack, null)).page;
    expect(await titles(fresh)).toEqual([]);
    const tampered = { ...exported, conversations: [...exported.conversations, { id: 7 }] } as Record<string, unknown>;
    (tampered.conversations as Record<string, unknown>[])[0]!.onload = "window.__pwned = 1";
    writeFileSync(join(ARTIFACTS, "import.json"), JSON.stringify(tampered));
    await fresh.setInputFiles("#import-file", join(ARTIFACTS, "import.json"));
    await fresh.locator("#conversations li").nth(1).waitFor({ timeout: WAIT_MS });
    expect(await titles(fresh)).toEqual(["Second export.", "First export."]);
    expect(await fresh.textContent("#notice")).toBe("Imported 2 conversations. 1 skipped as malformed.");
    await fresh.click("#conversations .open >> text=First export.");
    expect((await fresh.locator("li.assistant .markdown").textContent())?.trim()).toBe("One.");
    expect(await fresh.evaluate(() => (window as { __pwned?: number }).__pwned)).toBeUndefined();
    // Importing the same file again adds nothing.
    await fresh.setInputFiles("#import-file", file);
    await fresh.waitForFunction(() => document.getElementById("notice")?.textContent?.includes("already here"));
    expect(await titles(fresh)).toHaveLength(2);
    await fresh.setInputFiles("#import-file", { name: "x.json", mimeType: "application/json", buffer: Buffer.from("{nope") });
    await fresh.waitForFunction(() => document.getElementById("notice")?.textContent === "That file is not JSON.");
    await other.close();
    await page.close();
  });

  it("the theme toggle goes dark over a light system, and stays dark after a reload", async () => {
    const { page } = await open(context, stack, null);
    await converse(page, "Show me some code.", "```python\nprint('dark')\n```\n\nAnd a **table**:\n\n| a | b |\n|---|---|\n| 1 | 2 |");
    const background = (): Promise<string> => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const light = await background();
    await page.click("#theme");
    expect(await page.getAttribute("html", "data-theme")).toBe("dark");
    expect(await background()).not.toBe(light);
    expect(await background()).toBe("rgb(20, 23, 28)");
    await page.screenshot({ path: artifact("page-desktop-dark-toggle.png") });
    await page.reload();
    await page.waitForSelector("#prompt");
    expect(await page.getAttribute("html", "data-theme")).toBe("dark");
    expect(await background()).toBe("rgb(20, 23, 28)");
    await page.click("#theme");
    expect(await page.getAttribute("html", "data-theme")).toBe("light");
    expect(await background()).toBe(light);
    await page.close();
  });

  it("logging out with 'clear' forgets the conversations and shows the styled login page", async () => {
    const own = await session(browser, stack, DESKTOP);
    const { page } = await open(own, stack, null);
    await converse(page, "Remember this?", "No.");
    await page.check("#clear-on-logout");
    await page.click("#logout");
    await page.waitForSelector(".login-card", { timeout: WAIT_MS });
    // The card is in the DOM as soon as the HTML is parsed; its stylesheet may still be loading.
    await page.waitForLoadState("load", { timeout: WAIT_MS });
    expect(await page.textContent("h1")).toBe("llama-direct");
    expect(await page.isVisible("input#token")).toBe(true);
    expect(await page.evaluate(() => getComputedStyle(document.querySelector(".login-card") as Element).borderRadius)).toBe("10px");
    await page.screenshot({ path: artifact("page-desktop-login.png") });
    expect(JSON.parse(await stored(page))).toEqual([]);
    // The login form takes the access token and leads back to the page.
    await page.fill("#token", new URL(stack.loginUrl).searchParams.get("token") ?? "");
    await page.click('button[type="submit"]');
    await page.waitForSelector("#prompt", { timeout: WAIT_MS });
    expect(new URL(page.url()).search).toBe("");
    await own.close();
  });
});
