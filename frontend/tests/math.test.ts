// @vitest-environment jsdom
/** Math: found by marked's extensions, typeset by KaTeX as MathML, untrusted commands refused. */
import { describe, expect, it } from "vitest";
import { renderMarkdown } from "../src/page/markdown.ts";
import { KATEX_OPTIONS, typesetIn } from "../src/page/math.ts";

function html(source: string): HTMLDivElement {
  const box = document.createElement("div");
  box.append(renderMarkdown(source));
  document.body.append(box);
  return box;
}

const settle = async (box: HTMLElement): Promise<void> => {
  typesetIn(box);
  for (let i = 0; i < 50 && box.querySelector("[data-math]:not(:has(math))") !== null; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

describe("math", () => {
  it("finds inline and block math, and leaves money alone", () => {
    const box = html("Area $\\pi r^2$ and \\(a+b\\).\n\n$$\n\\frac{a}{b}\n$$\n\nIt costs $5 and $10.");
    const inline = Array.from(box.querySelectorAll<HTMLElement>('[data-math="inline"]')).map((n) => n.textContent);
    expect(inline).toEqual(["\\pi r^2", "a+b"]);
    expect(box.querySelector('[data-math="block"]')?.textContent).toBe("\\frac{a}{b}");
    expect(box.textContent).toContain("It costs $5 and $10.");
  });

  it("typesets as MathML with no style and no link", async () => {
    const box = html("$$\\href{javascript:alert(1)}{x} + \\frac{1}{2}$$");
    await settle(box);
    const block = box.querySelector('[data-math="block"]');
    expect(block?.querySelector("math")).not.toBeNull();
    expect(block?.querySelector("[style], a, [href]")).toBeNull();
    // The TeX source stays only as text (MathML's annotation), never as an attribute.
    for (const node of Array.from(block?.querySelectorAll("*") ?? [])) {
      for (const attr of Array.from(node.attributes)) expect(attr.value).not.toContain("javascript");
    }
  });

  it("bounds KaTeX: no trusted commands, a macro expansion limit, MathML only", () => {
    expect(KATEX_OPTIONS).toMatchObject({ trust: false, output: "mathml", throwOnError: false });
    expect(KATEX_OPTIONS.maxExpand).toBeLessThanOrEqual(1000);
  });
});
