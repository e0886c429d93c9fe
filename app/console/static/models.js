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
    if (row.promotion && row.promotion.decision === "held") {
      out.push(el("span", {"class": "badge bad", title: row.promotion.reason, text: "held"}));
    }
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
      renderPromotion();
      return loadDetail();
    }).catch(P.fail);
  }

  // The gate's decision on the newest version: the reason and both figures.
  function renderPromotion() {
    var newest = versions[versions.length - 1];
    var card = document.getElementById("promotion-card");
    var outcome = newest && newest.promotion;
    card.hidden = !outcome;
    if (!outcome) { return; }
    var compared = outcome.compared || {};
    var facts = [
      ["decision", el("span", {}, [P.badge(outcome.decision, outcome.decision === "held" ? "bad" : "current"),
                                   document.createTextNode(" v" + newest.version)])],
      ["reason", outcome.reason],
      ["new version", compared.n ? P.pct(compared.candidate_accuracy) + " on " + compared.n + " images" : P.pct(outcome.candidate && outcome.candidate.accuracy)],
      ["current version", outcome.current ? "v" + outcome.current.version + ": " + P.pct(compared.current_accuracy) : "none (the first version)"]
    ];
    var list = el("dl", {"class": "kv"});
    facts.forEach(function (fact) {
      list.appendChild(el("dt", {text: fact[0]}));
      list.appendChild(el("dd", {}, [typeof fact[1] === "string" ? document.createTextNode(fact[1]) : fact[1]]));
    });
    P.clear(document.getElementById("promotion")).appendChild(list);
  }

  // The model's retrain policy and what its served version's answers look like lately.
  function loadDetail() {
    return Promise.all([P.api("GET", "/models/" + P.path(name)), datasetsLoaded]).then(function (answers) {
      var detail = answers[0];
      renderPolicy(detail.policy);
      renderDrift(detail.drift, detail.loaded_version);
    }).catch(P.fail);
  }

  function renderPolicy(policy) {
    document.getElementById("policy-card").hidden = false;
    var form = document.getElementById("policy-form");
    document.getElementById("policy-remove").hidden = !policy;
    form.elements.after_new_images.value = policy && policy.after_new_images !== null ? policy.after_new_images : "";
    form.elements.every_hours.value = policy && policy.every_hours !== null ? policy.every_hours : "";
    form.elements.min_interval_minutes.value = policy ? policy.min_interval_minutes : 30;
    var datasets = document.getElementById("policy-dataset");
    if (policy) { datasets.value = policy.dataset; }
    document.getElementById("policy-state").textContent = policy
      ? (policy.due ? "Due: " : "") + policy.reason + (policy.next_due ? " Next: " + new Date(policy.next_due).toLocaleString() + "." : "")
      : "No policy: this model retrains only when someone asks.";
  }

  function savePolicy(event) {
    event.preventDefault();
    var form = event.target, body = {dataset: form.elements.dataset.value};
    ["after_new_images", "every_hours", "min_interval_minutes"].forEach(function (field) {
      if (form.elements[field].value !== "") { body[field] = Number(form.elements[field].value); }
    });
    P.api("PUT", "/models/" + P.path(name, "policy"), body).then(function (policy) {
      P.toast("Policy saved: " + policy.reason);
      renderPolicy(policy);
    }).catch(P.fail);
  }

  function removePolicy() {
    P.api("DELETE", "/models/" + P.path(name, "policy")).then(function () {
      P.toast("Policy removed.");
      renderPolicy(null);
    }).catch(P.fail);
  }

  function renderDrift(drift, version) {
    var card = document.getElementById("drift-card");
    card.hidden = !drift;
    if (!drift) { return; }
    var box = P.clear(document.getElementById("drift"));
    var figure = drift.drift === null ? "not yet (" + drift.window + " answers so far)" : drift.drift.toFixed(3) + " (PSI)";
    box.appendChild(el("p", {"class": "small"}, [
      document.createTextNode("v" + version + ", last " + drift.window + " answers. Drift from its test set: " + figure + " "),
      drift.alert ? P.badge("drift", "bad") : null]));
    var start = drift.timeline.length ? drift.timeline[0].start : 0;
    box.appendChild(P.lineChart([{name: "mean top score", color: "#2f6fb3",
      points: drift.timeline.map(function (b) { return [(b.start - start) / 60, b.mean_top_score]; })}],
      {title: "Confidence over time", yMin: 0, yMax: 1, xUnit: " min",
       format: function (v) { return P.pct(v, 0); }}));
    var counts = drift.recent.label_counts, total = drift.window || 1;
    box.appendChild(el("h3", {text: "Each label's share of the traffic"}));
    box.appendChild(P.bars(Object.keys(counts).sort().map(function (label) {
      return {label: label, score: counts[label] / total};
    })));
  }



  document.getElementById("policy-form").addEventListener("submit", savePolicy);
  document.getElementById("policy-remove").addEventListener("click", removePolicy);
  var datasetsLoaded = P.api("GET", "/datasets").then(function (content) {
    var select = document.getElementById("policy-dataset");
    P.listOf(content, "datasets").forEach(function (dataset) {
      select.appendChild(el("option", {value: dataset.name, text: dataset.name}));
    });
  }).catch(P.fail);

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
