/* Review page: the inbox, least confident first; keys 1-9 file a frame under a class, 0 discards it. */
(function () {
  "use strict";
  var P = window.Poets, el = P.el;
  var STORED = "poets.reviewDataset";
  var items = [], total = 0, keyClasses = [], datasetClasses = [], busy = false;
  var target = document.getElementById("target");

  function stored() { try { return window.localStorage.getItem(STORED) || ""; } catch (e) { return ""; } }

  function topOf(item) {
    var scores = (item.scores || []).slice().sort(function (a, b) { return b.score - a.score; });
    return scores[0] || null;
  }

  function computeKeys() {
    var seen = {}, keys = [];
    function add(label) { if (!seen[label] && keys.length < 9) { seen[label] = true; keys.push(label); } }
    datasetClasses.slice().sort().forEach(add);
    var modelLabels = [];
    items.forEach(function (item) { (item.scores || []).forEach(function (s) { modelLabels.push(s.label); }); });
    modelLabels.sort().forEach(add);
    keyClasses = keys;
  }

  function render() {
    var stage = P.clear(document.getElementById("stage"));
    var queue = P.clear(document.getElementById("queue"));
    document.getElementById("inbox-count").textContent = total + " frame" + (total === 1 ? "" : "s") + " waiting";
    if (!items.length) {
      stage.appendChild(el("p", {"class": "empty", text: "The inbox is empty. Label with “keep for review” on, or send camera frames to /label?collect=true."}));
      return;
    }
    var item = items[0];
    var top = topOf(item);
    var model = item.model ? item.model.name + " v" + item.model.version : "a model";
    var keys = el("div", {"class": "keys"});
    keyClasses.forEach(function (label, index) {
      keys.appendChild(el("button", {type: "button", "class": top && top.label === label ? "guess" : null,
                                     "data-key": String(index + 1), onclick: function () { file(label); }},
                          [el("kbd", {text: String(index + 1)}), label]));
    });
    keys.appendChild(el("button", {type: "button", "data-key": "0", onclick: discard}, [el("kbd", {text: "0"}), "discard"]));
    var other = el("input", {type: "text", placeholder: "other class… (Enter)", "aria-label": "Other class"});
    other.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && other.value.trim()) { file(other.value.trim()); }
      event.stopPropagation();
    });
    stage.appendChild(el("img", {"class": "photo", src: P.root + item.image, alt: "frame " + item.id}));
    stage.appendChild(el("div", {"class": "grow"}, [
      el("h2", {id: "guess", text: top ? "The model says " + top.label + " (" + P.pct(top.score) + ")" : "No guess"}),
      el("p", {"class": "muted small", text: model + (item.created ? " · " + new Date(item.created).toLocaleString() : "")}),
      P.bars(item.scores || []),
      keys,
      el("div", {style: "margin-top:8px"}, [other])
    ]));
    items.slice(1, 40).forEach(function (next) {
      queue.appendChild(el("img", {src: P.root + next.thumbnail, alt: "next frame", loading: "lazy"}));
    });
  }

  function advance(message) {
    items.shift();
    total = Math.max(0, total - 1);
    P.toast(message);
    if (!items.length && total > 0) { return load(); }
    render();
  }

  function act(body, message) {
    if (busy || !items.length) { return; }
    var item = items[0];
    busy = true;
    P.api("POST", "/review/" + P.path(item.id), body).then(function () {
      advance(message);
    }).catch(P.fail).then(function () { busy = false; });
  }

  function file(label) {
    if (!target.value) { P.toast("Create a dataset first (Datasets page), then pick it above.", "error"); return; }
    if (datasetClasses.indexOf(label) < 0) { datasetClasses.push(label); }
    act({dataset: target.value, label: label}, "Filed under " + label + " in " + target.value + ".");
  }

  function discard() { act({discard: true}, "Discarded."); }

  document.addEventListener("keydown", function (event) {
    var tag = (event.target && event.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "0") { event.preventDefault(); discard(); return; }
    var index = "123456789".indexOf(event.key);
    if (index >= 0 && index < keyClasses.length) { event.preventDefault(); file(keyClasses[index]); }
  });

  function loadClasses() {
    if (!target.value) { datasetClasses = []; return Promise.resolve(); }
    return P.api("GET", "/datasets/" + P.path(target.value)).then(function (dataset) {
      datasetClasses = Object.keys(dataset.classes || {});
    });
  }

  function load() {
    return Promise.all([P.api("GET", "/review?limit=200"), loadClasses()]).then(function (answers) {
      items = answers[0].items || [];
      total = answers[0].total || items.length;
      computeKeys();
      render();
    }).catch(P.fail);
  }

  target.addEventListener("change", function () {
    try { window.localStorage.setItem(STORED, target.value); } catch (e) { /* not kept */ }
    P.setQuery("dataset", target.value);
    load();
  });

  P.api("GET", "/datasets").then(function (content) {
    var names = P.listOf(content, "datasets").map(function (d) { return d.name; });
    if (!names.length) { target.appendChild(el("option", {value: "", text: "no dataset yet"})); }
    names.forEach(function (name) { target.appendChild(el("option", {value: name, text: name})); });
    var wanted = P.query("dataset") || stored();
    if (wanted && names.indexOf(wanted) >= 0) { target.value = wanted; }
    return load();
  }).catch(P.fail);
}());
