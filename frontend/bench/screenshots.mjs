// Screenshots of the page's states for the docs (docs/screenshots/), desktop (1280x800) and phone
// (390x844), light and dark, from the built page against the fake upstream (bench/fake-upstream.mjs):
// the replies are known Markdown, so each picture shows what the page does with it.
//
// Run `npm run build` first, then `node bench/screenshots.mjs`.
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { launch, serve, tokensOf } from "./fake-upstream.mjs";

const OUT = fileURLToPath(new URL("../../docs/screenshots/", import.meta.url));
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const ANSWER = [
  "A llama is a domesticated South American camelid. Three facts:",
  "",
  "1. **Height**: about 1.7–1.8 m at the head.",
  "2. **Diet**: grasses and hay; they chew cud.",
  "3. **Wool**: soft and lanolin-free.",
  "",
  "| animal | weight (kg) |",
  "|---|--:|",
  "| llama | 130–200 |",
  "| alpaca | 48–90 |",
  "",
  "Their pace is $v \\approx 8\\ \\text{km/h}$ on a long trek.",
  "",
  "```python",
  "def pack_weight(body_kg: float) -> float:",
  "    # a llama carries about a quarter of its weight",
  "    return 0.25 * body_kg",
  "```",
].join("\n");

const SECOND = "Alpacas are smaller, bred for *fibre*; llamas are larger and work as **pack animals**.";
const LONG = Array.from({ length: 40 }, (_, i) => `Paragraph ${i + 1}: the story goes on, and on, through the Andes and beyond.`).join("\n\n");

const replies = [];
const next = () => tokensOf(replies.shift() ?? "Fine.");

async function settle(page) {
  await page.waitForFunction(() => {
    const replies = document.querySelectorAll("li.assistant");
    return replies.length > 0 && replies[replies.length - 1].getAttribute("data-state") !== "streaming";
  });
  await page.waitForTimeout(300);
}

async function say(page, text, reply) {
  replies.push(reply);
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  await settle(page);
}

async function shot(page, name) {
  await page.screenshot({ path: `${OUT}${name}.png` });
  console.log(`docs/screenshots/${name}.png`);
}

async function desktop(browser, base) {
  const context = await browser.newContext({ viewport: DESKTOP, colorScheme: "light" });
  const page = await context.newPage();
  await page.goto(base);
  await page.waitForSelector("#prompt");
  await shot(page, "desktop-empty");
  await say(page, "Tell me about llamas: a list, a table, some math and code.", ANSWER);
  await shot(page, "desktop-reply");
  replies.push(SECOND);
  await page.click('li.assistant .actions button[data-action="regenerate"]');
  await settle(page);
  await shot(page, "desktop-branches");
  await page.click("#new-chat");
  await say(page, "Write a long story about a llama.", LONG);
  await page.click("#new-chat");
  await say(page, "What do alpacas eat?", "Mostly grass and hay.");
  await page.fill("#search", "llama");
  await shot(page, "desktop-search");
  await page.fill("#search", "");
  await page.click("#settings-toggle");
  await page.fill("#setting-system", "Answer in one short paragraph.");
  await page.fill("#setting-temperature", "0.7");
  await shot(page, "desktop-settings");
  await page.click("#settings-toggle");
  await page.click("#conversations .open >> nth=2");
  await page.click("#theme");
  await page.waitForTimeout(200);
  await shot(page, "desktop-dark");
  replies.push(LONG);
  await page.fill("#prompt", "And another long one, please.");
  await page.press("#prompt", "Enter");
  await page.waitForTimeout(1200);
  await shot(page, "desktop-streaming");
  await settle(page);
  await page.selectOption("#model", "bench-large");
  await page.locator("#model-load").waitFor();
  await shot(page, "desktop-model-unloaded");
  await page.click("#model-load");
  await page.waitForFunction(() => (document.getElementById("model-state")?.textContent ?? "").includes("%"));
  await shot(page, "desktop-model-loading");
  await page.selectOption("#model", "bench");
  await page.goto(`${base}login.html`);
  await shot(page, "desktop-login");
  await context.close();
}

async function phone(browser, base, colorScheme) {
  const context = await browser.newContext({ viewport: PHONE, colorScheme, deviceScaleFactor: 1, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  await page.goto(base);
  await page.waitForSelector("#prompt");
  await say(page, "Tell me about llamas: a list, a table, some math and code.", ANSWER);
  await shot(page, `phone-reply-${colorScheme}`);
  if (colorScheme === "light") {
    await page.click("#sidebar-toggle");
    await shot(page, "phone-sidebar");
    await page.goto(`${base}login.html`);
    await shot(page, "phone-login");
  }
  await context.close();
}

mkdirSync(OUT, { recursive: true });
// Slow enough that the streaming picture catches a reply half-way.
const server = await serve(next, 60);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await launch();
try {
  await desktop(browser, base);
  await phone(browser, base, "light");
  await phone(browser, base, "dark");
} finally {
  await browser.close();
  server.close();
}
