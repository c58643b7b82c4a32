/*
 * Live progress of sync runs: each element with data-progress-url polls that JSON view
 * (the admin's, gate-checked) every 1.5 s while its run is queued, running or rolling back,
 * and moves its bar, its "processed of total" text, the run's status badge and counts on the
 * page, without reloading. On a run's own page (data-reload-when-done) the page reloads once
 * the run stops, to show its diff, errors and buttons.
 */
(function () {
    "use strict";

    var INTERVAL_MS = 1500;
    var BADGE_CLASS = {
        queued: "integration-muted",
        running: "integration-info",
        held: "integration-warn",
        succeeded: "integration-ok",
        partial: "integration-warn",
        failed: "integration-bad",
        discarded: "integration-muted",
        rolling_back: "integration-info",
        rolled_back: "integration-muted"
    };

    function number(n) {
        return Number(n || 0).toLocaleString("en-US");
    }

    function render(el, data) {
        var fill = el.querySelector(".integration-progress-fill");
        var text = el.querySelector(".integration-progress-text");
        if (fill) {
            fill.style.width = data.percent + "%";
        }
        el.setAttribute("aria-valuenow", String(data.percent));
        if (text) {
            var line = data.total
                ? number(data.processed) + " of " + number(data.total) + " · " + data.percent + "%"
                : (data.status === "queued" || data.status === "rolling_back"
                    ? "Waiting for a worker" : "Counting records…");
            if (data.phase) {
                line += " · " + data.phase;
            }
            text.textContent = line;
        }
        document.querySelectorAll('[data-run-status="' + data.id + '"]').forEach(function (badge) {
            badge.textContent = data.status_label;
            badge.className = "integration-badge " + (BADGE_CLASS[data.status] || "integration-muted");
        });
        Object.keys(data.counts || {}).forEach(function (name) {
            document.querySelectorAll('[data-run-count="' + data.id + ":" + name + '"]').forEach(function (cell) {
                cell.textContent = number(data.counts[name]);
                if (cell.parentElement.classList.contains("integration-count")) {
                    cell.parentElement.classList.toggle("integration-zero", !data.counts[name]);
                }
            });
        });
    }

    function stopped(el, data) {
        if (el.hasAttribute("data-reload-when-done")) {
            window.location.reload();
            return;
        }
        var text = el.querySelector(".integration-progress-text");
        if (text) {
            text.textContent = data.status_label + (data.message ? ": " + data.message : "");
        }
        el.classList.add("integration-progress-stopped");
    }

    function poll(el) {
        fetch(el.getAttribute("data-progress-url"), {
            credentials: "same-origin",
            headers: { "Accept": "application/json" },
            cache: "no-store"
        })
            .then(function (response) {
                if (!response.ok) {
                    throw new Error("HTTP " + response.status);
                }
                return response.json();
            })
            .then(function (data) {
                render(el, data);
                if (data.active) {
                    window.setTimeout(function () { poll(el); }, INTERVAL_MS);
                } else {
                    stopped(el, data);
                }
            })
            .catch(function () {
                // A restart or a network blip: try again, more slowly.
                window.setTimeout(function () { poll(el); }, INTERVAL_MS * 4);
            });
    }

    function start() {
        document.querySelectorAll("[data-progress-url]").forEach(function (el) {
            window.setTimeout(function () { poll(el); }, INTERVAL_MS);
        });
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
