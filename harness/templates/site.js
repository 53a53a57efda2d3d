"use strict";
// Sorting: each method is one <tbody> (its row and its panel), so panels move with their rows. The
// first click on a metric puts the best first (the direction comes from the result files); the next
// click reverses. Rows without a value always go last.
function compareValues(a, b, text, sign) {
  const missing = (v) => v === undefined || v === "";
  if (missing(a) || missing(b)) {
    return Number(missing(a)) - Number(missing(b));
  }
  return sign * (text ? a.localeCompare(b) : Number(a) - Number(b));
}

for (const table of document.querySelectorAll("table.board")) {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) => {
    th.querySelector("button.sort").addEventListener("click", () => {
      const kind = th.dataset.kind;
      const first = kind === "higher" ? "descending" : "ascending";
      const current = th.getAttribute("aria-sort");
      const order = current === first ? (first === "ascending" ? "descending" : "ascending") : first;
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", order);
      const sign = order === "ascending" ? 1 : -1;
      const value = (body) => body.rows[0].cells[column].dataset.value;
      const bodies = Array.from(table.tBodies);
      bodies.sort((a, b) => compareValues(value(a), value(b), kind === "text", sign));
      bodies.forEach((body) => table.appendChild(body));
    });
  });
}

// The panel of a method: its configuration, provenance, result files and plots.
for (const button of document.querySelectorAll("button.toggle")) {
  button.addEventListener("click", () => {
    const panel = document.getElementById(button.getAttribute("aria-controls"));
    const open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
  });
}
