/** The lane that served a reply, in words a user understands, with a tooltip that explains it. */
import type { Lane } from "../shape.ts";

export const LANE_WORDS: Record<Lane, { word: string; explain: string }> = {
  direct: {
    word: "Direct",
    explain: "Streamed straight from the model server, not relayed through this site's server.",
  },
  fallback: {
    word: "Relayed",
    explain: "The direct stream was unavailable, so this site's server relayed the reply instead.",
  },
  resumed: {
    word: "Resumed",
    explain: "The stream broke mid-reply and was picked up where it left off; no text was lost.",
  },
};

/** Show `lane` on an indicator element: its word, its tooltip and `data-lane` for styling. */
export function showLane(node: HTMLElement, lane: Lane): void {
  const { word, explain } = LANE_WORDS[lane];
  node.textContent = word;
  node.title = explain;
  node.setAttribute("aria-label", `${word}: ${explain}`);
  node.dataset.lane = lane;
  node.hidden = false;
}
