// @vitest-environment jsdom
/** The theme toggle cycles system → dark → light, marks the root for the CSS, and is kept. */
import { beforeEach, describe, expect, it } from "vitest";
import { bindTheme, nextTheme, storedTheme, THEME_KEY } from "../src/page/theme.ts";

describe("theme", () => {
  beforeEach(() => {
    window.localStorage.clear();
    delete document.documentElement.dataset.theme;
  });

  it("cycles through the three choices", () => {
    expect([nextTheme("system"), nextTheme("dark"), nextTheme("light")]).toEqual(["dark", "light", "system"]);
  });

  it("follows the system until toggled, then keeps the choice across a reload", () => {
    const toggle = document.createElement("button");
    bindTheme(toggle);
    expect(document.documentElement.dataset.theme).toBeUndefined();
    expect(toggle.getAttribute("aria-label")).toContain("follows the system");
    toggle.click();
    expect(document.documentElement.dataset.theme).toBe("dark");
    expect(window.localStorage.getItem(THEME_KEY)).toBe("dark");
    const reloaded = document.createElement("button");
    delete document.documentElement.dataset.theme;
    bindTheme(reloaded);
    expect(document.documentElement.dataset.theme).toBe("dark");
    reloaded.click();
    reloaded.click();
    expect(document.documentElement.dataset.theme).toBeUndefined();
    expect(storedTheme()).toBe("system");
  });

  it("reads anything else stored as following the system", () => {
    window.localStorage.setItem(THEME_KEY, "<b>");
    expect(storedTheme()).toBe("system");
  });
});
