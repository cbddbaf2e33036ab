// Live pages: each listens to its server-sent events and updates in place (no reload).
// Everything from the server is put in the page as text (textContent), never as HTML.
"use strict";

function countsNode(counts) {
  const span = document.createElement("span");
  span.className = "counts";
  for (const state of Object.keys(counts).sort()) {
    const one = document.createElement("span");
    one.className = "state " + state;
    one.textContent = state + " " + counts[state];
    span.append(one, " ");
  }
  return span;
}

function setCounts(root, data) {
  const states = root.querySelector(".states");
  if (states) states.replaceChildren(countsNode(data.counts));
  const total = root.querySelector(".total");
  if (total) total.textContent = data.total;
  const alive = root.querySelector(".alive");
  if (alive) alive.textContent = data.alive ? "running" : "stopped";
}

function listen(url, onData) {
  const source = new EventSource(url);
  source.onmessage = (event) => onData(JSON.parse(event.data));
  source.addEventListener("gone", () => source.close());
  window.addEventListener("beforeunload", () => source.close());
  return source;
}

function overview() {
  listen("/events", (items) => {
    const known = new Set();
    for (const item of items) {
      const row = document.querySelector(`tr[data-id="${item.id}"]`);
      known.add(item.id);
      if (row) setCounts(row, item);
    }
    const rows = document.querySelectorAll("tr[data-id]");
    if (rows.length !== known.size) window.location.reload(); // a record appeared or went
  });
}

function batch(url) {
  let first = true;
  listen(`${url}/events`, async (data) => {
    setCounts(document.querySelector(".summary"), data);
    if (first) { first = false; return; }
    const params = new URLSearchParams(window.location.search);
    params.set("fragment", "1");
    const answer = await fetch(`${url}?${params}`);
    if (answer.ok) {
      const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
      document.getElementById("table").replaceChildren(...doc.body.childNodes);
    }
  });
}

function bestRows(best) {
  const body = document.querySelector("#best tbody");
  body.replaceChildren(...best.map((r) => {
    const tr = document.createElement("tr");
    const params = Object.keys(r.params).sort().map((k) => `${k}=${r.params[k]}`).join(", ");
    for (const text of [r.trial, r.value, params, r.node || ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

function search(id) {
  listen(`/search/${id}/events`, (data) => {
    setCounts(document.querySelector(".summary"), data);
    document.getElementById("completed").textContent = data.completed;
    for (const [name, fig] of Object.entries(data.figures)) {
      const div = document.getElementById("fig-" + name);
      if (div) Plotly.react(div, fig.data, fig.layout, {responsive: true});
    }
    bestRows(data.best);
    document.body.dataset.points = data.completed; // for people and tests: what is drawn
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page, id = document.body.dataset.id;
  const url = document.body.dataset.url;
  if (page === "overview") overview();
  else if (page === "batch") batch(url);
  else if (page === "search") search(id);
});
