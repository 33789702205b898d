/**
 * The conversation's settings: a system prompt, the temperature and a reply's token limit. Blank
 * means the server's own choice; the broker clamps the limit to the grant's cap whatever is asked.
 */

export interface ChatSettings {
  system: string;
  temperature?: number;
  maxTokens?: number;
}

export interface SettingsInput {
  system: string;
  temperature: string;
  maxTokens: string;
}

export const TEMPERATURE_MAX = 2;
export const MAX_TOKENS_MAX = 1_000_000;

/** The fields' text to settings; a value out of range is an error naming its field, not a guess. */
export function parseSettings(input: SettingsInput): { settings: ChatSettings; errors: string[] } {
  const settings: ChatSettings = { system: input.system.trim() };
  const errors: string[] = [];
  const temperature = input.temperature.trim();
  if (temperature !== "") {
    const value = Number(temperature);
    if (Number.isFinite(value) && value >= 0 && value <= TEMPERATURE_MAX) settings.temperature = value;
    else errors.push(`Temperature must be a number from 0 to ${TEMPERATURE_MAX}.`);
  }
  const maxTokens = input.maxTokens.trim();
  if (maxTokens !== "") {
    const value = Number(maxTokens);
    if (Number.isInteger(value) && value >= 1 && value <= MAX_TOKENS_MAX) settings.maxTokens = value;
    else errors.push("Max tokens must be a whole number of at least 1.");
  }
  return { settings, errors };
}

/** The request body's fields for these settings (the system prompt goes in the messages). */
export function requestFields(settings: ChatSettings): { temperature?: number; max_tokens?: number } {
  return {
    ...(settings.temperature !== undefined ? { temperature: settings.temperature } : {}),
    ...(settings.maxTokens !== undefined ? { max_tokens: settings.maxTokens } : {}),
  };
}

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

/** The settings panel: its labelled fields, opened and closed by the "Settings" button. */
export class SettingsPanel {
  private readonly panel = byId<HTMLFieldSetElement>("settings");
  private readonly toggle = byId<HTMLButtonElement>("settings-toggle");
  private readonly system = byId<HTMLTextAreaElement>("setting-system");
  private readonly temperature = byId<HTMLInputElement>("setting-temperature");
  private readonly maxTokens = byId<HTMLInputElement>("setting-max-tokens");

  constructor() {
    this.toggle.addEventListener("click", () => {
      this.panel.hidden = !this.panel.hidden;
      this.toggle.setAttribute("aria-expanded", String(!this.panel.hidden));
      if (!this.panel.hidden) this.system.focus();
    });
  }

  /** The settings now, or the errors that keep a message from being sent. */
  read(): { settings: ChatSettings; errors: string[] } {
    return parseSettings(this.raw());
  }

  /** The fields' text, as stored with the conversation. */
  raw(): SettingsInput {
    return { system: this.system.value, temperature: this.temperature.value, maxTokens: this.maxTokens.value };
  }

  write(input: SettingsInput): void {
    this.system.value = input.system;
    this.temperature.value = input.temperature;
    this.maxTokens.value = input.maxTokens;
  }

  /** Call `listener` when a field changes (the conversation keeps its settings). */
  onInput(listener: () => void): void {
    this.panel.addEventListener("change", listener);
  }
}
