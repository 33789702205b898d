/**
 * The chat page as a user meets it, against the real stack in headless Chromium: Markdown rendered
 * and sanitized under the page's CSP, the code block's Copy, the newest reply kept above the composer,
 * the follow stopped by scrolling up and brought back by "Jump to latest", retry / edit / regenerate,
 * and a phone's width. Replies with known Markdown are streamed in llama-server's own chunk format.
 */
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fulfilWith, open, path, send, session, settled, stored, WAIT_MS } from "./chat_page.ts";
import { artifact, launchBrowser, type Stack, startStack } from "./stack.ts";

const LANE = "**/direct/v1/chat/completions";

const MARKDOWN = [
  "## Results",
  "",
  "Some **bold**, `inline code` and a [link](https://example.com/docs).",
  "",
  "- one",
  "- two",
  "",
  "| name | value |",
  "|---|--:|",
  "| alpha | 1 |",
  "",
  "```python",
  "def add(a, b):",
  "    return a + b",
  "```",
  "",
  '<img src=x onerror="window.__pwned = 1">',
  "",
  "<script>window.__pwned = 2</script>",
  "",
  "[bad](javascript:window.__pwned=3) <a href=\"javascript:window.__pwned=4\">worse</a>",
  "",
  "![a cat](https://images.example.invalid/cat.png)",
  "",
  "Math: $x^2 + y^2$, and",
  "",
  "$$",
  "\\frac{a}{b}",
  "$$",
].join("\n");

const LONG = Array.from({ length: 30 }, (_, i) => `Line ${i + 1} of a long answer, with enough words to wrap.`).join("\n\n");

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

/** Console lines the CSP or a page error wrote. */
function watchProblems(page: Page): string[] {
  const problems: string[] = [];
  page.on("console", (line) => {
    if (line.type() === "error") problems.push(line.text());
  });
  page.on("pageerror", (error) => problems.push(String(error)));
  return problems;
}

/** The bottom of the newest reply's last line, and the top of the composer, in the window. */
async function lastLineAndComposer(page: Page): Promise<{ line: number; top: number; paneTop: number }> {
  return page.evaluate(() => {
    const replies = document.querySelectorAll("li.assistant");
    const last = replies[replies.length - 1];
    const line = last?.querySelector(".markdown > :last-child, .status-line:not(:empty), .error") ?? last;
    return {
      line: line?.getBoundingClientRect().bottom ?? Number.NaN,
      top: document.getElementById("composer")?.getBoundingClientRect().top ?? Number.NaN,
      paneTop: document.getElementById("conversation")?.getBoundingClientRect().top ?? Number.NaN,
    };
  });
}

describe("reading", () => {
  let context: BrowserContext;
  beforeAll(async () => {
    context = await session(browser, stack, { width: 1280, height: 800 });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(stack.baseUrl).origin });
  });
  afterAll(async () => context?.close());

  it("renders Markdown, runs nothing from the model, loads no remote image, and copies code", async () => {
    const { page, requests } = await open(context, stack, null);
    const problems = watchProblems(page);
    await page.route(LANE, fulfilWith(MARKDOWN));
    const reply = await send(page, "Show me some Markdown.");
    expect(await settled(reply)).toBe("done");
    expect(await reply.locator("h2").textContent()).toBe("Results");
    expect(await reply.locator("strong").textContent()).toBe("bold");
    expect(await reply.locator("table td").first().textContent()).toBe("alpha");
    expect(await reply.locator(".markdown li").count()).toBe(2);
    const link = reply.locator("a", { hasText: "link" });
    expect(await link.getAttribute("target")).toBe("_blank");
    expect(await link.getAttribute("rel")).toBe("noopener noreferrer");
    // The highlighter is a chunk loaded on first use, under the page's CSP.
    await reply.locator(".codeblock .hljs-keyword").first().waitFor({ timeout: WAIT_MS });
    // KaTeX is a chunk loaded on first use too; it writes MathML, which needs no inline style.
    await reply.locator('[data-math="block"] math').waitFor({ timeout: WAIT_MS });
    expect(await reply.locator('[data-math="inline"] math').count()).toBe(1);
    expect(await reply.locator("img").count()).toBe(0);
    expect(await reply.locator("script").count()).toBe(0);
    expect(await reply.locator('a[href^="javascript"]').count()).toBe(0);
    expect(await reply.textContent()).toContain('<img src=x onerror="window.__pwned = 1">');
    await reply.locator("a", { hasText: "bad" }).click();
    // Raw HTML is shown as the text the model wrote, never parsed: no link to click.
    expect(await reply.textContent()).toContain('<a href="javascript:window.__pwned=4">worse</a>');
    expect(await page.evaluate(() => (window as { __pwned?: number }).__pwned)).toBeUndefined();
    expect(requests.some((r) => r.url().includes("images.example.invalid"))).toBe(false);
    const placeholder = reply.locator("button.remote-image");
    expect(await placeholder.textContent()).toContain("images.example.invalid");

    const copy = reply.locator(".codeblock button.copy-code");
    // A copy is asynchronous, and its "Copied" label lasts 1.5 s: poll the clipboard itself.
    const clipboard = (): Promise<string> => page.evaluate(() => navigator.clipboard.readText());
    await copy.click();
    await expect.poll(clipboard, { timeout: WAIT_MS }).toBe("def add(a, b):\n    return a + b");
    await reply.locator('.actions button[data-action="copy"]').click();
    await expect.poll(clipboard, { timeout: WAIT_MS }).toBe(MARKDOWN);
    await page.screenshot({ path: artifact("page-desktop-markdown.png") });
    expect(problems).toEqual([]);
    await page.close();
  });
});

describe("scrolling", () => {
  let context: BrowserContext;
  beforeAll(async () => {
    context = await session(browser, stack, { width: 1000, height: 760 });
  });
  afterAll(async () => context?.close());

  it("keeps the newest reply above the composer after five turns", async () => {
    const { page } = await open(context, stack, null);
    await page.route(LANE, fulfilWith(LONG));
    for (let turn = 1; turn <= 5; turn += 1) {
      const reply = await send(page, `Turn ${turn}: a long answer, please.`);
      expect(await settled(reply)).toBe("done");
      // The follow scrolls after the last chunk lands: polled, as a loaded machine lays out late.
      const inView = async (): Promise<boolean> => {
        const { line, top, paneTop } = await lastLineAndComposer(page);
        return line <= top + 1 && line > paneTop;
      };
      await expect.poll(inView, { timeout: WAIT_MS }).toBe(true);
    }
    await page.screenshot({ path: artifact("page-five-turns.png") });
    await page.close();
  });

  it("scrolling up stops the follow; Jump to latest brings it back; Stopped. is in view", async () => {
    const { page } = await open(context, stack, null);
    await page.route(LANE, fulfilWith(LONG));
    expect(await settled(await send(page, "A long answer first."))).toBe("done");
    await page.unroute(LANE);
    const reply = await send(page, "Write a very long story, at least two thousand words, about a llama who travels the world.");
    await reply.locator(".markdown").waitFor({ timeout: WAIT_MS });
    const pane = page.locator("#conversation");
    const box = await pane.boundingBox();
    await page.mouse.move((box?.x ?? 0) + 200, (box?.y ?? 0) + 200);
    await page.mouse.wheel(0, -600);
    await page.locator("#jump").waitFor({ state: "visible", timeout: WAIT_MS });
    const held = await pane.evaluate((node) => node.scrollTop);
    const grownFrom = await pane.evaluate((node) => node.scrollHeight);
    await page.waitForFunction((h) => (document.getElementById("conversation")?.scrollHeight ?? 0) > h + 40, grownFrom, { timeout: WAIT_MS });
    expect(await pane.evaluate((node) => node.scrollTop)).toBe(held);
    await page.screenshot({ path: artifact("page-jump.png") });
    await page.click("#jump");
    expect(await page.isHidden("#jump")).toBe(true);
    // Polled, not slept on: a loaded machine may take longer than any fixed pause to scroll and lay out.
    const fromBottom = (): Promise<number> => pane.evaluate((n) => n.scrollHeight - n.scrollTop - n.clientHeight);
    await expect.poll(fromBottom, { timeout: WAIT_MS }).toBeLessThan(60);
    await page.click("#stop");
    expect(await settled(reply)).toBe("stopped");
    expect(await reply.locator(".status-line").textContent()).toBe("Stopped.");
    const statusBelowComposer = async (): Promise<number> => {
      const status = await reply.locator(".status-line").boundingBox();
      const composer = await page.locator("#composer").boundingBox();
      return (status?.y ?? 0) + (status?.height ?? 0) - (composer?.y ?? 0);
    };
    await expect.poll(statusBelowComposer, { timeout: WAIT_MS }).toBeLessThanOrEqual(1);
    await page.close();
  });
});

describe("message actions", () => {
  let context: BrowserContext;
  beforeAll(async () => {
    context = await session(browser, stack);
  });
  afterAll(async () => context?.close());

  const lastUser = (body: unknown): unknown => {
    const messages = (body as { messages: { role: string; content: unknown }[] }).messages;
    return messages.filter((m) => m.role === "user").at(-1)?.content;
  };

  it("retries after an error with the prompt kept, edits and resends, regenerates", async () => {
    const { page, requests } = await open(context, stack);
    await page.route(LANE, (route) =>
      route.fulfill({ status: 400, contentType: "application/json", body: '{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}' }),
    );
    const failed = await send(page, "Name a colour.");
    expect(await settled(failed)).toBe("error");
    await page.unroute(LANE);
    const lane = () => requests.filter((r) => path(r) === "/direct/v1/chat/completions");
    const before = lane().length;
    await failed.locator('.actions button[data-action="retry"]').click();
    const retried = page.locator("li.assistant").first();
    expect(await settled(retried)).toBe("done");
    expect(lane().length).toBe(before + 1);
    expect(lastUser(lane().at(-1)?.postDataJSON())).toBe("Name a colour.");
    expect(await page.locator("li.user").count()).toBe(1);

    await page.click('li.user .actions button[data-action="edit"]');
    await page.getByLabel("Edit your message").fill("Name a fruit.");
    await page.getByLabel("Edit your message").press("Enter");
    const edited = page.locator("li.assistant").first();
    await page.waitForFunction(() => document.querySelector("li.assistant")?.getAttribute("data-state") !== "streaming" && document.querySelectorAll("li.assistant").length === 1);
    expect(await settled(edited)).toBe("done");
    expect(lastUser(lane().at(-1)?.postDataJSON())).toBe("Name a fruit.");
    expect(await page.locator("li.user .text").textContent()).toBe("Name a fruit.");

    const count = lane().length;
    await page.click('li.assistant .actions button[data-action="regenerate"]');
    expect(await settled(page.locator("li.assistant").first())).toBe("done");
    expect(lane().length).toBe(count + 1);
    expect(await page.locator("li.assistant").count()).toBe(1);
    expect(lastUser(lane().at(-1)?.postDataJSON())).toBe("Name a fruit.");
    await page.close();
  });
});

describe("settings", () => {
  it("sends the system prompt, temperature and token limit, and refuses a bad value", async () => {
    const context = await session(browser, stack, { width: 1280, height: 800 }, "dark");
    const { page, requests } = await open(context, stack, null);
    await page.click("#settings-toggle");
    await page.getByLabel("Temperature").fill("7");
    await page.fill("#prompt", "Say hi.");
    await page.press("#prompt", "Enter");
    expect(await page.textContent("#notice")).toBe("Temperature must be a number from 0 to 2.");
    expect(await page.locator("li.assistant").count()).toBe(0);
    await page.getByLabel("System prompt").fill("Answer in one word.");
    await page.getByLabel("Temperature").fill("0.3");
    await page.getByLabel("Max tokens").fill("12");
    await page.route(LANE, fulfilWith(MARKDOWN));
    expect(await settled(await send(page, "Say hi."))).toBe("done");
    const body = requests.find((r) => path(r) === "/direct/v1/chat/completions")?.postDataJSON() as Record<string, unknown>;
    expect((body.messages as unknown[])[0]).toEqual({ role: "system", content: "Answer in one word." });
    expect(body.temperature).toBe(0.3);
    expect(body.max_tokens).toBe(12);
    const negotiation = requests.find((r) => path(r) === "/direct-stream")?.postDataJSON() as Record<string, unknown>;
    expect(negotiation.max_tokens).toBe(12);
    await page.screenshot({ path: artifact("page-desktop-dark-settings.png") });
    await context.close();
  });

  it("sends the samplers to the real llama-server, which answers, and keeps them with the conversation", async () => {
    const context = await session(browser, stack, { width: 1280, height: 800 });
    const { page, requests } = await open(context, stack, null);
    await page.click("#settings-toggle");
    await page.getByLabel("Top P").fill("1.5");
    await page.fill("#prompt", "Say hi.");
    await page.press("#prompt", "Enter");
    expect(await page.textContent("#notice")).toBe("Top P must be a number from 0 to 1.");
    await page.getByLabel("Top P").fill("0.9");
    await page.getByLabel("Top K").fill("40");
    await page.getByLabel("Min P").fill("0.05");
    await page.getByLabel("Repeat penalty").fill("1.1");
    await page.getByLabel("Max tokens").fill("12");
    expect(await settled(await send(page, "Say hi."))).toBe("done");
    const body = requests.find((r) => path(r) === "/direct/v1/chat/completions")?.postDataJSON() as Record<string, unknown>;
    expect([body.top_p, body.top_k, body.min_p, body.repeat_penalty]).toEqual([0.9, 40, 0.05, 1.1]);
    await expect.poll(() => stored(page), { timeout: WAIT_MS }).toContain('"topK":"40"');
    await page.reload();
    await page.waitForSelector("li.assistant");
    await page.click("#settings-toggle");
    expect(await page.getByLabel("Top K").inputValue()).toBe("40");
    expect(await page.getByLabel("Repeat penalty").inputValue()).toBe("1.1");
    await context.close();
  });
});

describe("a reply streaming at reload", () => {
  it("picks the stream up again after the reload, from the lane, and settles it", async () => {
    const context = await session(browser, stack, { width: 1280, height: 800 });
    const { page, requests } = await open(context, stack, 120);
    const reply = await send(page, "Write a very long story, at least two thousand words, about a llama who travels the world.");
    await reply.locator(".text").waitFor({ timeout: WAIT_MS });
    const before = ((await reply.locator(".text").textContent()) ?? "").trim();
    expect(before.length).toBeGreaterThan(0);
    expect(await reply.getAttribute("data-state")).toBe("streaming");
    await page.reload();
    const resumed = page.locator("li.assistant").first();
    // The rest comes at llama-server's pace on a shared box: a generous wait, on the reply's state.
    await resumed.locator("xpath=self::*[@data-state!='streaming']").waitFor({ timeout: 4 * WAIT_MS });
    expect(await resumed.getAttribute("data-state")).toBe("done");
    expect(await resumed.getAttribute("data-lane")).toBe("resumed");
    expect(((await resumed.locator(".text").textContent()) ?? "").trim().startsWith(before.slice(0, 20))).toBe(true);
    const gets = requests.filter((r) => path(r) === "/direct/v1/stream" && r.method() === "GET");
    expect(gets).toHaveLength(1);
    expect(new URL(gets[0]?.url() ?? "").searchParams.get("from")).toBe("0");
    const negotiations = requests.filter((r) => path(r) === "/direct-stream").map((r) => r.postDataJSON());
    expect(negotiations.at(-1)).toEqual({ resume: expect.any(String) });
    // Settled, the turn holds no stream any more: another reload resumes nothing.
    await expect.poll(() => stored(page), { timeout: WAIT_MS }).not.toContain('"pending"');
    await page.reload();
    expect(await settled(page.locator("li.assistant").first())).toBe("done");
    expect(requests.filter((r) => path(r) === "/direct/v1/stream" && r.method() === "GET")).toHaveLength(1);
    await context.close();
  });
});

describe("conversations", () => {
  it("keeps conversations across a reload; opens, starts and deletes them from the sidebar", async () => {
    const context = await session(browser, stack, { width: 1280, height: 800 });
    const { page } = await open(context, stack, null);
    page.on("dialog", (dialog) => void dialog.accept());
    await page.route(LANE, fulfilWith("First answer."));
    expect(await settled(await send(page, "First conversation"))).toBe("done");
    await page.click("#new-chat");
    expect(await page.locator("li.msg").count()).toBe(0);
    await page.unroute(LANE);
    await page.route(LANE, fulfilWith("Second answer, with **bold**."));
    expect(await settled(await send(page, "Second conversation"))).toBe("done");
    await expect.poll(() => stored(page), { timeout: WAIT_MS }).toContain("Second answer");
    await page.reload();
    await page.locator("#conversations li").nth(1).waitFor({ timeout: WAIT_MS });
    expect(await page.locator("#conversations .open").allTextContents()).toEqual(["Second conversation", "First conversation"]);
    expect(await page.locator("li.user .text").allTextContents()).toEqual(["Second conversation"]);
    expect(await page.locator("li.assistant strong").textContent()).toBe("bold");
    await page.click("#conversations .open >> text=First conversation");
    expect((await page.locator("li.assistant .markdown").textContent())?.trim()).toBe("First answer.");
    await page.screenshot({ path: artifact("page-desktop-conversations.png") });
    await page.click('#conversations button[data-action="delete"] >> nth=1');
    await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 1);
    expect(await page.locator("#conversations .open").allTextContents()).toEqual(["Second conversation"]);
    await context.close();
  });
});

describe("phones", () => {
  for (const width of [390, 360]) {
    it(`fits ${width} px with no horizontal scroll, and the composer grows with its text`, async () => {
      const context = await session(browser, stack, { width, height: 844 });
      const { page } = await open(context, stack, null);
      await page.route(LANE, fulfilWith(`${MARKDOWN}\n\n\`\`\`\n${"x".repeat(300)}\n\`\`\`\n\n| ${"wide | ".repeat(20)}\n|${"---|".repeat(20)}\n| ${"cell | ".repeat(20)}`));
      expect(await settled(await send(page, "Markdown on a phone."))).toBe("done");
      const widths = await page.evaluate(() => ({
        doc: document.documentElement.scrollWidth,
        body: document.body.scrollWidth,
        bar: document.querySelector(".bar")?.scrollWidth ?? 0,
        pane: document.getElementById("conversation")?.scrollWidth ?? 0,
      }));
      expect(widths.doc).toBeLessThanOrEqual(width);
      expect(widths.body).toBeLessThanOrEqual(width);
      expect(widths.bar).toBeLessThanOrEqual(width);
      expect(widths.pane).toBeLessThanOrEqual(width);
      const send_ = await page.locator("#send").boundingBox();
      expect((send_?.x ?? 0) + (send_?.width ?? 0)).toBeLessThanOrEqual(width);
      const small = (await page.locator("#prompt").boundingBox())?.height ?? 0;
      await page.fill("#prompt", "one\ntwo\nthree\nfour");
      await page.locator("#prompt").dispatchEvent("input");
      expect((await page.locator("#prompt").boundingBox())?.height ?? 0).toBeGreaterThan(small + 30);
      if (width === 390) await page.screenshot({ path: artifact("page-phone-390.png") });
      await context.close();
    });
  }
});
