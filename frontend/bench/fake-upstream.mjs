// A fake upstream for the page's benchmark and screenshots: it serves the built page (broker/static)
// with the broker's CSP, grants the direct lane, and streams each reply in llama-server's chunk format.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const STATIC = fileURLToPath(new URL("../../broker/static/", import.meta.url));
/** The model the fake upstream answers with (BENCH_MODEL names another). */
const MODEL = process.env.BENCH_MODEL ?? "bench";
/** A second model it lists as not loaded, which "loads" over `LOAD_MS` when a request names it. */
const SECOND = `${MODEL}-large`;
const LOAD_MS = 6000;
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
// The broker's page policy (broker/static.py PAGE_CSP), so the page runs as it does when served.
const CSP = readFileSync(fileURLToPath(new URL("../../broker/static.py", import.meta.url)), "utf8")
  .match(/PAGE_CSP = \(\n((?:\s+".*"\n)+)\)/)[1]
  .split("\n")
  .map((line) => line.trim().replace(/^"|"$/g, ""))
  .join("");

/** A Markdown reply of `count` tokens (about four characters each): headings, lists, code, a table. */
export function replyTokens(count) {
  const parts = [];
  for (let section = 1; parts.join("").length < count * 4.2; section++) {
    parts.push(`## Section ${section}\n\nSome **bold** words, some *emphasis* and \`inline code\` in a paragraph that runs on.\n\n`);
    parts.push(`- first point of section ${section}\n- second point, with a [link](https://example.com/${section})\n\n`);
    parts.push("```python\n" + `def step_${section}(x):\n    return x * ${section} + 1\n` + "```\n\n");
    parts.push(`| key | value |\n|---|--:|\n| a${section} | ${section} |\n| b${section} | ${section * 2} |\n\n`);
  }
  const text = parts.join("");
  const tokens = [];
  for (let at = 0; at < text.length && tokens.length < count; at += 4) tokens.push(text.slice(at, at + 4));
  return tokens;
}

function chunk(delta, finish = null, extra = {}) {
  const frame = { id: "bench", object: "chat.completion.chunk", created: 0, model: MODEL, choices: [{ index: 0, delta, finish_reason: finish }], ...extra };
  return `data: ${JSON.stringify(frame)}\n\n`;
}

async function stream(response, tokens, rate) {
  response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*" });
  const started = performance.now();
  for (let i = 0; i < tokens.length; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    response.write(chunk({ content: tokens[i] }));
  }
  // llama-server's last chunk carries its timings: the page shows the speed from them.
  response.write(chunk({}, "stop", { timings: { predicted_n: tokens.length, predicted_per_second: rate } }));
  response.end("data: [DONE]\n\n");
}

/** The second model's state, as a router lists it: unloaded, loading with its progress, loaded. */
function secondModel(loadStarted) {
  if (loadStarted === null) return { id: SECOND, object: "model", status: "unloaded", vision: false };
  const done = (performance.now() - loadStarted) / LOAD_MS;
  if (done >= 1) return { id: SECOND, object: "model", status: "loaded", vision: false };
  return { id: SECOND, object: "model", status: "loading", vision: false, progress: Math.round(done * 100) / 100 };
}

/**
 * Serve the built page with its CSP, a grant for the direct lane, a loaded model and one that loads
 * when asked (the token-counting route naming it), and each chat request's reply as `next()` gives it
 * (a list of tokens), streamed at `rate` tokens/s.
 */
export function serve(next, rate) {
  let loadStarted = null;
  const server = createServer((request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    if (request.method === "OPTIONS") {
      response.writeHead(204, { "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "*", "Access-Control-Allow-Methods": "POST" });
      return response.end();
    }
    if (path === "/direct-stream") {
      const url = `http://127.0.0.1:${server.address().port}/direct`;
      response.writeHead(200, { "Content-Type": "application/json" });
      return response.end(JSON.stringify({ supported: true, url, token: "bench", conversation_id: null }));
    }
    if (path === "/direct/v1/chat/completions") return void stream(response, next(), rate);
    if (path === "/direct/v1/chat/completions/input_tokens") {
      loadStarted ??= performance.now();
      const wait = Math.max(0, loadStarted + LOAD_MS - performance.now());
      setTimeout(() => {
        response.writeHead(200, { "Content-Type": "application/json", "Access-Control-Allow-Origin": "*" });
        response.end(JSON.stringify({ input_tokens: 3 }));
      }, wait);
      return;
    }
    if (path === "/v1/models") {
      response.writeHead(200, { "Content-Type": "application/json" });
      const data = [{ id: MODEL, object: "model", status: "loaded", vision: false }, secondModel(loadStarted)];
      return response.end(JSON.stringify({ object: "list", data }));
    }
    const name = path === "/" ? "index.html" : path.slice(1);
    if (name.includes("..")) return response.writeHead(404).end();
    try {
      const body = readFileSync(join(STATIC, name));
      response.writeHead(200, { "Content-Type": TYPES[extname(name)] ?? "application/octet-stream", "Content-Security-Policy": CSP });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}


/** Debian's Chromium (E2E_CHROMIUM names another), headless, as the browser tests run it. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.E2E_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run"],
  });
}

/** `text` as tokens of about four characters. */
export function tokensOf(text) {
  const tokens = [];
  for (let at = 0; at < text.length; at += 4) tokens.push(text.slice(at, at + 4));
  return tokens;
}
