// Small DOM helpers for the console (no framework).

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

export function button(text: string, onClick: () => Promise<unknown> | void, cls = ""): HTMLButtonElement {
  const b = el("button", cls ? { class: cls } : {}, text);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
    } catch (e) {
      report(e);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

/// Replaces a select's options, keeping the selected value when it is still offered.
export function setOptions(select: HTMLSelectElement, options: { value: string; label: string }[], placeholder: string) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "" }, placeholder), ...options.map((o) => el("option", { value: o.value }, o.label)));
  if (options.some((o) => o.value === keep)) select.value = keep;
}

export function table(head: string[], rows: (Node | string)[][]): HTMLTableElement {
  return el(
    "table",
    {},
    el("tr", {}, ...head.map((h) => el("th", {}, h))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))),
  );
}

/// Shows an error in the page's log line.
export function report(e: unknown) {
  const log = document.getElementById("log");
  if (log) log.textContent = `${new Date().toLocaleTimeString()} ${(e as Error).message ?? String(e)}`;
}

export function ago(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds <= 0) return "-";
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}
