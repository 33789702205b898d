/**
 * Dark and light: the page follows the system (the CSS's `color-scheme: light dark`) until the user
 * picks one with the toggle, which cycles system → dark → light and is kept in localStorage. The choice
 * is `data-theme` on the root element, which fixes the CSS's color-scheme; "system" removes it.
 */
export type Theme = "system" | "dark" | "light";

export const THEME_KEY = "llama-direct.theme";
const ORDER: Theme[] = ["system", "dark", "light"];
const WORDS: Record<Theme, [icon: string, label: string]> = {
  system: ["◐", "Theme: follows the system. Switch to dark"],
  dark: ["☾", "Theme: dark. Switch to light"],
  light: ["☀", "Theme: light. Switch to following the system"],
};

export function nextTheme(theme: Theme): Theme {
  return ORDER[(ORDER.indexOf(theme) + 1) % ORDER.length] as Theme;
}

export function storedTheme(): Theme {
  try {
    const value = window.localStorage.getItem(THEME_KEY);
    return value === "dark" || value === "light" ? value : "system";
  } catch {
    return "system";
  }
}

/** Apply `theme` to the page and show it on the toggle. */
export function applyTheme(theme: Theme, toggle: HTMLButtonElement | null): void {
  const root = document.documentElement;
  if (theme === "system") delete root.dataset.theme;
  else root.dataset.theme = theme;
  if (toggle === null) return;
  const [icon, label] = WORDS[theme];
  toggle.textContent = icon;
  toggle.title = label;
  toggle.setAttribute("aria-label", label);
  toggle.dataset.theme = theme;
}

/** Wire the toggle: each click moves to the next theme and keeps it. */
export function bindTheme(toggle: HTMLButtonElement): void {
  let theme = storedTheme();
  applyTheme(theme, toggle);
  toggle.addEventListener("click", () => {
    theme = nextTheme(theme);
    applyTheme(theme, toggle);
    try {
      if (theme === "system") window.localStorage.removeItem(THEME_KEY);
      else window.localStorage.setItem(THEME_KEY, theme);
    } catch {
      // storage may be off (private mode): the choice then lasts for this page only
    }
  });
}
