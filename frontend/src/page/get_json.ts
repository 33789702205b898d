/**
 * The page's reads of the broker's JSON documents (`v1/models`, `v1/usage`), each as the logged-in
 * user (the session cookie). A read that fails leaves what the page shows as it was: the next read
 * (a reply settling, a poll while one waits) tries again.
 */

/** The JSON body of `GET url`, null for a body that is not JSON; undefined where the broker could not
 * be reached or answered an error. */
export async function getJson(url: string): Promise<unknown> {
  let answer: Response;
  try {
    answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch {
    return undefined;
  }
  if (!answer.ok) return undefined;
  return answer.json().catch(() => null);
}
