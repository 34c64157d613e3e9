"""What a search prints while it runs: one progress line instead of Ray's status table, and none of the
libraries' notices that call for no action. ``--verbose`` keeps both as the libraries print them.

The progress line is a ``ray.tune.ProgressReporter`` (Ray calls it from its own loop, as it calls its
status table): trials running and done (completed, stopped early by ASHA or patience, invalid, failed),
the best score so far and its trial, the time since the search started and an estimate of what is left,
from the trial-epochs done so far against the trial-epochs the search is expected to run.
"""

from __future__ import annotations

import io
import logging
import shutil
import sys
import time
from dataclasses import dataclass

from ray.tune import ProgressReporter

LIVE_EVERY_S = 2.0     # a terminal: the line is rewritten in place this often
LINE_EVERY_S = 15.0    # a log file or a pipe: a new line this often (and one at the end)
PRIOR_WEIGHT = 3       # the ASHA estimate of a trial's epochs counts as this many finished trials

# Start-up notices that call for no action, by the logger that writes them and how the message begins.
SILENCED = {
    # A Ray started by the search enables token authentication by itself and says so; the notice only
    # tells how to turn it off. Its counterpart, that a cluster runs without a token, still shows.
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    # A trial's result carries its epochs' records as a list ("epochs"), which TensorBoard cannot plot; the
    # per-epoch metrics it can plot are logged, so its one warning about the list calls for nothing.
    "ray.tune.logger.tensorboardx": ("You are trying to log an invalid value (ray/tune/epochs=",),
}


class DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


class DropLines(io.TextIOBase):
    """A text stream that passes on to ``target`` every line but those starting with ``prefixes`` (for
    notices a library prints rather than logs)."""

    def __init__(self, target, prefixes: tuple[str, ...]):
        super().__init__()
        self.target, self.prefixes, self.pending = target, prefixes, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if not line.startswith(self.prefixes):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not self.pending.startswith(self.prefixes):
            self.target.write(self.pending)
        self.pending = ""
        self.target.flush()


def quiet_libraries(verbose: bool = False) -> None:
    """Only warnings that call for action reach the console: MLflow's info lines (creating the store's
    tables, registering model versions: the summary says where the model is) and the notices above go.
    ``verbose`` puts them back."""
    from mlflow.utils.logging_utils import get_mlflow_log_level

    logging.getLogger("mlflow").setLevel(get_mlflow_log_level() if verbose else logging.WARNING)
    for name, prefixes in SILENCED.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, DropNotices)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(DropNotices(prefixes))


# ---- the progress line -----------------------------------------------------------------------------------

def asha_milestones(grace: int, factor: int, max_epochs: int) -> list[int]:
    """The epochs where ASHA decides (grace * factor**k), and max_epochs where every trial ends."""
    out = [min(grace, max_epochs)]
    while out[-1] < max_epochs:
        out.append(min(out[-1] * max(factor, 2), max_epochs))
    return out


def asha_expected_epochs(asha: tuple[int, int, int], reached: int = 0) -> float:
    """Epochs a trial that has run ``reached`` epochs runs in all, on average, when ASHA lets 1/factor of
    the trials at each milestone go on (``asha``: grace period, reduction factor, max epochs)."""
    grace, factor, max_epochs = asha
    later = [m for m in asha_milestones(grace, factor, max_epochs) if m > reached]
    if not later:
        return float(reached)
    expected, share = float(later[0]), 1.0    # it runs at least to the next milestone
    for before, after in zip(later, later[1:]):
        share /= factor
        expected += share * (after - before)
    return expected


# How finished trials ended, as the progress line names them.
FINISHED = {"completed": "completed", "stopped": "stopped early", "invalid": "invalid", "diverged": "diverged",
            "failed": "failed"}


def how_it_ended(status: str, last: dict, max_epochs: int) -> str:
    """running, pending, completed, stopped (ASHA or patience), invalid, diverged or failed."""
    if status == "ERROR":
        return "failed"
    if status != "TERMINATED":
        return "running" if status == "RUNNING" else "pending"
    reason = str(last.get("end_reason") or "")
    if reason.startswith(("invalid", "diverged")):
        return reason.split()[0]
    if reason == "completed" or (not reason and int(last.get("epoch", 0) or 0) >= max_epochs):
        return "completed"
    return "stopped"


def clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Tally:
    """Where a search stands, from its trials' statuses and last results."""

    counts: dict[str, int]
    epochs_done: int          # trial-epochs run so far
    epochs_expected: float    # trial-epochs the whole search is expected to run
    best: tuple[float, str] | None   # (score, trial id)


def tally(trials: list, total: int, metric: str, mode: str, asha: tuple[int, int, int]) -> Tally:
    """``asha`` is (grace period, reduction factor, max epochs); ``total`` the trials the search will run."""
    counts = dict.fromkeys(("running", "pending", *FINISHED), 0)
    finished, running, best = [], [], None
    for trial in trials:
        last = trial.last_result or {}
        state = how_it_ended(trial.status, last, asha[2])
        counts[state] += 1
        epoch = int(last.get("epoch", 0) or 0)
        (running if state in ("running", "pending") else finished).append(epoch)
        # the trial's own best, over the epochs a result carries in a list too (results from before it: Ray's)
        score = last.get("best_score", trial.metric_analysis.get(metric, {}).get(mode)) if epoch > 0 else None
        if score is not None and (best is None or (score > best[0] if mode == "max" else score < best[0])):
            best = (score, trial.trial_id)
    unstarted = max(total - len(trials), 0)            # not created by the searcher yet
    counts["pending"] += unstarted
    # A new trial's epochs: what finished trials ran, shrunk towards ASHA's figure while they are few.
    per_trial = (PRIOR_WEIGHT * asha_expected_epochs(asha) + sum(finished)) / (PRIOR_WEIGHT + len(finished))
    expected = (sum(finished) + per_trial * unstarted
                + sum(asha_expected_epochs(asha, e) if e else per_trial for e in running))
    return Tally(counts, sum(finished) + sum(running), expected, best)


def progress_line(t: Tally, metric: str, elapsed: float, rate: float | None, done: bool) -> str:
    """``rate``: trial-epochs per second so far (None before there is one)."""
    c = t.counts
    finished = sum(c[k] for k in FINISHED)
    kinds = ", ".join(f"{c[k]} {label}" for k, label in FINISHED.items() if c[k])
    trials = f"[{clock(elapsed)}] {finished}/{finished + c['running'] + c['pending']} trials done" \
             + (f" ({kinds})" if kinds else "") + ("" if done else f", {c['running']} running")
    parts = [trials] + ([f"best {metric} {t.best[0]:.4g} ({t.best[1]})"] if t.best else [])
    if done:
        return " | ".join([*parts, f"{t.epochs_done} trial-epochs"])
    epochs = f"{t.epochs_done}/~{max(t.epochs_expected, t.epochs_done):.0f} trial-epochs"
    eta = f", ETA {clock((t.epochs_expected - t.epochs_done) / rate)}" if rate else ""
    return " | ".join([*parts, epochs + eta])


class SearchProgress(ProgressReporter):
    """One line of progress: rewritten in place on a terminal, appended every LINE_EVERY_S otherwise.

    The pace behind the estimate is measured from the first epoch any trial finishes, so that Ray's and the
    workers' start-up do not count as training time; the time between trials does.
    """

    def __init__(self, metric: str, mode: str, asha: tuple[int, int, int], total: int):
        self.metric, self.mode, self.asha, self.total = metric, mode, asha, total
        self.setup()

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        """Ray calls this as each run of the search starts (a resume too: the reporter comes back pickled)."""
        self.start = start_time or time.time()
        self.total = total_samples or self.total
        self._last_report = 0.0
        self._baseline: int | None = None                    # trial-epochs done before this run (a resume)
        self._first_epoch: tuple[float, int] | None = None   # (when, trial-epochs) at the first new epoch

    def should_report(self, trials, done: bool = False) -> bool:
        if self._first_epoch is None:   # Ray asks after every step of its loop: the first epoch is seen in time
            epochs = sum(int((t.last_result or {}).get("epoch", 0) or 0) for t in trials)
            self._baseline = epochs if self._baseline is None else self._baseline
            if epochs > self._baseline:
                self._first_epoch = (time.time(), epochs)
        every = LIVE_EVERY_S if sys.stdout.isatty() else LINE_EVERY_S
        return done or time.monotonic() - self._last_report >= every

    def rate(self, epochs_done: int) -> float | None:
        """Trial-epochs per second since the first one (None until there is a pace to tell)."""
        if self._first_epoch is None:
            return None
        since, at = self._first_epoch
        seconds = time.time() - since
        return (epochs_done - at) / seconds if epochs_done > at and seconds > 0 else None

    def report(self, trials, done: bool, *sys_info):
        self._last_report = time.monotonic()
        t = tally(trials, self.total, self.metric, self.mode, self.asha)
        line = progress_line(t, self.metric, time.time() - self.start, self.rate(t.epochs_done), done)
        out = sys.stdout
        if out.isatty():   # back to the line's start, clear it, write what fits; the last one ends the line
            line = f"\r\x1b[K{line[:shutil.get_terminal_size().columns - 1]}" + ("\n" if done else "")
        else:
            line += "\n"
        out.write(line)
        out.flush()
