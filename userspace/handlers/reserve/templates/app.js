// Progressive enhancement: the form works without this. Shows the full name as it is typed
// and asks /api/availability (debounced) whether it is free.
(function () {
  var name = document.getElementById("name");
  var full = document.getElementById("full");
  var out = document.getElementById("availability");
  if (!name || !full || !out) return;
  var zone = full.textContent.replace(/^[^.]*\./, "");
  var timer = null;
  var seq = 0;
  function update() {
    var v = name.value.trim().toLowerCase();
    full.textContent = (v || "<name>") + "." + zone;
    clearTimeout(timer);
    if (!v) { out.textContent = ""; return; }
    timer = setTimeout(function () {
      var mine = ++seq;
      fetch("/api/availability?name=" + encodeURIComponent(v), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (j) {
          if (mine !== seq) return;
          out.className = j.available ? "ok" : "bad";
          out.textContent = j.available ? "Available" : (j.message || "Not available");
        })
        .catch(function () { out.textContent = ""; });
    }, 250);
  }
  name.addEventListener("input", update);
})();
