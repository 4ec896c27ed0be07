// Keyboard for the annotation page: 1-8 pick a point, b toggles "both bad", s skips, n saves and
// moves on. Keys typed into the comment box stay there (Esc leaves it).
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("label");
  if (!form) return;
  const note = document.getElementById("note");
  let sent = false;
  const send = (button) => {
    if (sent) return;
    sent = true;
    form.requestSubmit(button);
  };
  form.addEventListener("submit", (event) => {
    const skipping = event.submitter && event.submitter.id === "skip";
    const chosen = form.querySelector("input[name=point]:checked") || document.getElementById("both_bad").checked;
    if (!skipping && !chosen) {
      event.preventDefault();
      sent = false;
      note.textContent = "Pick a point on the scale (1-8) or tick 'both bad' first, or skip (s).";
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.tagName === "TEXTAREA" || (event.target.tagName === "INPUT" && event.target.type === "text");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.key >= "1" && event.key <= "8") {
      document.getElementById("point" + event.key).checked = true;
      note.textContent = "";
    } else if (event.key === "b") {
      const box = document.getElementById("both_bad");
      box.checked = !box.checked;
    } else if (event.key === "s") {
      send(document.getElementById("skip"));
    } else if (event.key === "n") {
      send(document.getElementById("next"));
    } else {
      return;
    }
    event.preventDefault();
  });
});
