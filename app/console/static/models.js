/* Models page: every version with its metrics; activate, pin or unpin one, roll back, compare two. */
(function () {
  "use strict";
  var P = window.Poets, el = P.el;
  var select = document.getElementById("model");
  var name = null, versions = [], currentVersion = null, pinnedVersion = null, pick = {a: null, b: null};

  function activate(version) {
    return P.api("POST", "/models/" + P.path(name, "versions", String(version), "activate")).then(function (answer) {
      P.toast(name + " v" + answer.version + " is now served.");
      return loadVersions();
    }).catch(P.fail);
  }

  function pin(version) {
    return P.api("POST", "/models/" + P.path(name, "versions", String(version), "pin")).then(function () {
      P.toast(name + " v" + version + " is pinned: retrains publish without replacing it.");
      return loadVersions();
    }).catch(P.fail);
  }

  function unpin() {
    return P.api("DELETE", "/models/" + P.path(name, "pin")).then(function () {
      P.toast(name + " is unpinned: the next retrain becomes current.");
      return loadVersions();
    }).catch(P.fail);
  }

  function stateBadges(row) {
    var out = [];
    if (row.current) { out.push(P.badge("current")); }
    if (row.pinned) { out.push(P.badge("pinned")); }
    if (row.loaded) { out.push(P.badge("loaded")); }
    if (row.load_error) { out.push(el("span", {"class": "badge bad", title: row.load_error, text: "load error"})); }
    return el("td", {}, out);
  }

  function radio(slot, version) {
    var input = el("input", {type: "radio", name: "compare-" + slot, value: String(version),
                             "aria-label": "compare " + slot.toUpperCase() + ": version " + version});
    input.checked = pick[slot] === version;
    input.addEventListener("change", function () { pick[slot] = version; compare(); });
    return el("td", {}, [el("label", {"class": "tap"}, [input])]);
  }

  function renderVersions() {
    var body = P.clear(document.getElementById("versions"));
    if (!versions.length) { body.appendChild(el("tr", {}, [el("td", {colspan: "9", "class": "empty", text: "No versions yet."})])); }
    versions.slice().reverse().forEach(function (row) {
      body.appendChild(el("tr", {"data-version": String(row.version), "class": row.current ? "selected" : null}, [
        radio("a", row.version), radio("b", row.version),
        el("td", {}, [el("strong", {text: "v" + row.version})]),
        el("td", {"class": "small", text: row.created ? new Date(row.created).toLocaleString() : "–"}),
        el("td", {"class": "small", text: row.architecture || "–"}),
        el("td", {text: P.pct(row.test_accuracy)}),
        el("td", {"class": "small", title: (row.labels || []).join(", "), text: String((row.labels || []).length)}),
        stateBadges(row),
        el("td", {"class": "actions"}, [
          row.current ? null : el("button", {type: "button", "class": "secondary", text: "Activate",
            title: "Serve this version now; the next retrain replaces it unless a pin holds",
            onclick: function () { activate(row.version); }}),
          row.pinned
            ? el("button", {type: "button", "class": "secondary", text: "Unpin", "data-action": "unpin",
                title: "Let the next retrain become current again", onclick: unpin})
            : el("button", {type: "button", "class": "secondary", text: "Pin", "data-action": "pin",
                title: "Serve this version until unpinned: retrains publish without replacing it",
                onclick: function () { pin(row.version); }})
        ])
      ]));
    });
    var older = versions.filter(function (row) { return row.version < currentVersion; });
    var rollback = document.getElementById("rollback");
    rollback.hidden = !older.length;
    if (older.length) {
      var to = older[older.length - 1].version;
      rollback.textContent = "Roll back to v" + to;
      rollback.onclick = function () { activate(to); };
    }
  }

  // Everything shown comes from the version's own poets.json, through /models/{name}/versions.
  function column(row, other) {
    var metrics = row.metrics || {};
    var config = row.hyperparameters || {};
    var testAcc = metrics.test_accuracy !== undefined ? metrics.test_accuracy : row.test_accuracy;
    var delta = null;
    if (other && other.test_accuracy !== null && other.test_accuracy !== undefined && testAcc !== null && testAcc !== undefined) {
      var diff = testAcc - other.test_accuracy;
      delta = el("span", {"class": diff >= 0 ? "delta-up" : "delta-down",
                          text: " (" + (diff >= 0 ? "+" : "") + (diff * 100).toFixed(1) + " pts)"});
    }
    var facts = [
      ["test accuracy", el("span", {}, [P.accuracy(testAcc, metrics.test_n, metrics.test_interval), delta])],
      ["train / validation", P.pct(metrics.train_accuracy) + " / " + P.pct(metrics.validation_accuracy)],
      ["architecture", row.architecture || "–"],
      ["classes", (row.labels || []).join(", ") || "–"],
      ["created", row.created ? new Date(row.created).toLocaleString() : "–"],
      ["training steps", config.how_many_training_steps !== undefined ? String(config.how_many_training_steps) : "–"],
      ["learning rate", config.learning_rate !== undefined ? String(config.learning_rate) : "–"],
      ["optimizer", config.optimizer || "–"]
    ];
    var list = el("dl", {"class": "kv"});
    facts.forEach(function (fact) {
      list.appendChild(el("dt", {text: fact[0]}));
      list.appendChild(el("dd", {}, [typeof fact[1] === "string" ? document.createTextNode(fact[1]) : fact[1]]));
    });
    var parts = [el("h3", {style: "margin-top:0", text: name + " v" + row.version + (row.current ? " (current)" : "")}), list];
    if (metrics.confusion_matrix && row.labels && row.labels.length) {
      parts.push(el("h3", {text: "Confusion matrix"}), P.confusion(row.labels, metrics.confusion_matrix));
      if (metrics.per_class) { parts.push(P.perClass(metrics.per_class)); }
    } else if (!metrics.test_accuracy) {
      parts.push(el("p", {"class": "muted small", text: "No test metrics for this version (imported, or trained without a test split)."}));
    }
    return el("div", {"class": "card", "data-compare": String(row.version)}, parts);
  }

  function compare() {
    var card = document.getElementById("compare-card");
    var a = versions.filter(function (row) { return row.version === pick.a; })[0];
    var b = versions.filter(function (row) { return row.version === pick.b; })[0];
    if (!a || !b || a === b) { card.hidden = true; return; }
    card.hidden = false;
    document.getElementById("compare-title").textContent = "Compare v" + a.version + " and v" + b.version;
    var box = P.clear(document.getElementById("compare"));
    box.appendChild(column(a, null));
    box.appendChild(column(b, a));
  }

  function loadVersions() {
    if (!name) { return Promise.resolve(); }
    return P.api("GET", "/models/" + P.path(name, "versions")).then(function (content) {
      versions = content.versions || [];
      currentVersion = content.current_version;
      pinnedVersion = content.pinned_version;
      document.getElementById("pin-state").textContent = pinnedVersion
        ? "Pinned to v" + pinnedVersion + ": retrains publish new versions without replacing it."
        : "Not pinned: each retrain becomes current when it is published.";
      var numbers = versions.map(function (row) { return row.version; });
      if (numbers.indexOf(pick.b) < 0) { pick.b = currentVersion; }
      if (numbers.indexOf(pick.a) < 0 || pick.a === pick.b) {
        var others = numbers.filter(function (v) { return v !== pick.b; });
        pick.a = others.length ? others[others.length - 1] : null;
      }
      renderVersions();
      compare();
    }).catch(P.fail);
  }

  select.addEventListener("change", function () {
    name = select.value;
    pick = {a: null, b: null};
    P.setQuery("model", name);
    loadVersions();
  });

  P.api("GET", "/models").then(function (content) {
    var models = P.listOf(content, "models");
    if (!models.length) {
      select.appendChild(el("option", {value: "", text: "no model yet"}));
      P.clear(document.getElementById("versions")).appendChild(el("tr", {}, [el("td", {colspan: "9", "class": "empty",
        text: "No model yet: train one on the Jobs page."})]));
      return;
    }
    models.forEach(function (model) { select.appendChild(el("option", {value: model.name, text: model.name})); });
    var wanted = P.query("model") || content.serves_by_default || content.default_model;
    select.value = models.some(function (m) { return m.name === wanted; }) ? wanted : models[0].name;
    name = select.value;
    return loadVersions();
  }).catch(P.fail);
}());
