// Bundle the demo page into the broker's package data (broker/static/), which it serves at `/`, and
// `directFetch` as a standalone ES module that the broker serves at `./llama-direct.js`, for a page that
// bundles nothing (`import { directFetch } from "./llama-direct.js"`). The npm package is not built
// here: `npm pack` compiles it with tsc (tsconfig.build.json).
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const out = fileURLToPath(new URL("../../broker/static/", import.meta.url));
const OUTPUTS = new Set(["index.html", "login.html", "app.js", "app.css", "llama-direct.js"]);
/** Parts of the page loaded when first needed (the highlighter and its languages). */
const CHUNKS = "chunks";

await mkdir(out, { recursive: true });
for (const name of await readdir(out)) {
  if (OUTPUTS.has(name)) await rm(out + name);
}
await rm(out + CHUNKS, { recursive: true, force: true });
/** One bundle setting for both outputs: ES modules, minified, quiet. */
const COMMON = { bundle: true, format: "esm", minify: true, legalComments: "none", logLevel: "warning" };
/** The standalone `directFetch` module asks only for ES2022. */
const CLIENT_TARGET = ["es2022", "chrome110", "firefox115", "safari16"];
/** The page's colours are CSS light-dark() (theme.css), which these browsers have (Baseline 2024). */
const PAGE_TARGET = ["es2022", "chrome123", "firefox120", "safari17.5"];
await build({
  ...COMMON,
  target: PAGE_TARGET,
  entryPoints: [root + "src/page/app.ts", root + "src/page/app.css"],
  outdir: out,
  splitting: true,
  chunkNames: `${CHUNKS}/[name]-[hash]`,
});
await build({
  ...COMMON,
  target: CLIENT_TARGET,
  entryPoints: [root + "src/direct_fetch.ts"],
  outfile: out + "llama-direct.js",
});
await copyFile(root + "src/page/index.html", out + "index.html");
await copyFile(root + "src/page/login.html", out + "login.html");
console.log(`built ${[...OUTPUTS].join(", ")} and ${CHUNKS}/ into ${out}`);
