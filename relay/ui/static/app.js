// clip-relay dashboard: the little that helps (no inline scripts: the CSP forbids them).
// Copy buttons: <button data-copy="ID"> copies the text of the element with that id.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
  if (!button) return;
  const source = document.getElementById(button.getAttribute("data-copy") || "");
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent || "").then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
});
// Times are shown in UTC; hovering one shows it in the viewer's own time zone.
for (const el of document.querySelectorAll("time[datetime]")) {
  const at = new Date(el.getAttribute("datetime") || "");
  if (!Number.isNaN(at.getTime())) el.title = at.toLocaleString();
}
