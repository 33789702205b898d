// @vitest-environment jsdom
/** The Markdown step: GFM rendered, hostile input made harmless (model output is untrusted). */
import { describe, expect, it } from "vitest";
import { fenceLanguage, renderMarkdown, safeLinkUrl } from "../src/page/markdown.ts";

function html(source: string): HTMLDivElement {
  const box = document.createElement("div");
  box.append(renderMarkdown(source));
  return box;
}

const HOSTILE = [
  "<img src=x onerror=alert(1)>",
  "<script>alert(1)</script>",
  '<a href="javascript:alert(1)">x</a>',
  "[click](javascript:alert(1))",
  "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
  '<p style="position:fixed" class="bar">styled</p>',
  '<form action="/logout"><button>go</button></form>',
  '<svg onload="alert(1)"></svg>',
  '<iframe src="https://example.com"></iframe>',
  "![x](javascript:alert(1))",
  '<div onclick="alert(1)">hi</div>',
  "[relative](/logout)",
];

describe("renderMarkdown", () => {
  it("renders GFM: headings, lists, tables, task lists, strikethrough, fences", () => {
    const box = html("# Title\n\n- a\n- b\n\n| x | y |\n|---|--:|\n| 1 | 2 |\n\n- [x] done\n\n~~gone~~\n\n```python\nprint(1)\n```\n");
    expect(box.querySelector("h1")?.textContent).toBe("Title");
    expect(box.querySelectorAll("ul li").length).toBe(3);
    expect(box.querySelector("table td")?.textContent).toBe("1");
    expect(box.querySelector("input")?.getAttribute("type")).toBe("checkbox");
    expect(box.querySelector("input")?.hasAttribute("disabled")).toBe(true);
    expect(box.querySelector("del")?.textContent).toBe("gone");
    const block = box.querySelector(".codeblock");
    expect(block?.querySelector("code")?.dataset.lang).toBe("python");
    expect(block?.querySelector("code")?.textContent).toBe("print(1)");
    expect(block?.querySelector("button[data-action=copy-code]")?.textContent).toBe("Copy");
  });

  for (const source of HOSTILE) {
    it(`makes harmless: ${source}`, () => {
      const box = html(source);
      for (const node of Array.from(box.querySelectorAll("*"))) {
        expect(["SCRIPT", "IFRAME", "FORM", "SVG", "IMG", "STYLE", "OBJECT"]).not.toContain(node.tagName.toUpperCase());
        for (const attr of Array.from(node.attributes)) {
          expect(attr.name.startsWith("on")).toBe(false);
          if (attr.name === "style") throw new Error(`style kept on ${node.tagName}`);
          if (attr.name === "class") expect(["codeblock", "codehead", "copy-code", "remote-image"]).toContain(attr.value);
        }
        const href = node.getAttribute("href");
        if (href !== null) expect(href).toMatch(/^(https?|mailto):/);
      }
    });
  }

  it("shows raw HTML as the text the model wrote", () => {
    expect(html("<img src=x onerror=alert(1)>").textContent).toContain("<img src=x onerror=alert(1)>");
  });

  it("opens links in a new tab without opener or referrer", () => {
    const link = html("see [docs](https://example.com/a) and https://example.org").querySelectorAll("a");
    expect(link.length).toBe(2);
    expect(link[0]?.getAttribute("href")).toBe("https://example.com/a");
    expect(link[0]?.getAttribute("target")).toBe("_blank");
    expect(link[0]?.getAttribute("rel")).toBe("noopener noreferrer");
  });

  it("replaces a remote image by a placeholder naming its host", () => {
    const box = html("![a cat](https://img.example.net/cat.png)");
    expect(box.querySelector("img")).toBeNull();
    const button = box.querySelector<HTMLButtonElement>("button.remote-image");
    expect(button?.dataset.src).toBe("https://img.example.net/cat.png");
    expect(button?.textContent).toContain("img.example.net");
  });

  it("drops a data: image to its alt text", () => {
    const box = html("![dot](data:image/png;base64,AAAA)");
    expect(box.querySelector("img, button")).toBeNull();
    expect(box.textContent).toContain("[image: dot]");
  });
});

describe("helpers", () => {
  it("keeps a fence language to one safe word", () => {
    expect(fenceLanguage("TypeScript {1,3}")).toBe("typescript");
    expect(fenceLanguage('"><script>')).toBe("");
    expect(fenceLanguage(undefined)).toBe("");
  });
  it("accepts only absolute http(s) and mailto links", () => {
    expect(safeLinkUrl("https://a.b/")?.href).toBe("https://a.b/");
    expect(safeLinkUrl("mailto:x@y.z")?.protocol).toBe("mailto:");
    expect(safeLinkUrl(" javascript:alert(1)")).toBeNull();
    expect(safeLinkUrl("JaVaScRiPt:alert(1)")).toBeNull();
    expect(safeLinkUrl("data:text/html,x")).toBeNull();
    expect(safeLinkUrl("/logout")).toBeNull();
    expect(safeLinkUrl(null)).toBeNull();
  });
});
