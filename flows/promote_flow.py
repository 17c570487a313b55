"""PromoteFlow: the promotion gate between a finished FashionFlow run and the model users get.

python flows/promote_flow.py run                                          # candidate: latest successful FashionFlow run
python flows/promote_flow.py run --candidate FashionFlow/<run-id>         # a given candidate
python flows/promote_flow.py --trigger FashionFlow/<run-id> run           # as the deployed trigger would start it
python flows/promote_flow.py run --candidate FashionFlow/<run-id> --rollback true   # re-promote an earlier run
python flows/promote_flow.py --config rules my-rules.yaml run             # other rules (configs/promotion/)

Deployed (Step Functions, Argo), `@trigger_on_finish` starts the gate whenever a FashionFlow run finishes, with that
run as the candidate.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from metaflow import Config, FlowSpec, Parameter, card, current, step, trigger_on_finish
from promote_cards import decision_card
from promote_runs import find_candidate, find_champion, move_tag, now_utc, run_facts
from shared_hints import card_hint

from fmnist.promotion import DEFAULT_RULES_PATH, PromotionRules, RunFacts, decide, load_rules, parse_rules

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@trigger_on_finish(flow="FashionFlow")
class PromoteFlow(FlowSpec):
    """May a candidate FashionFlow run replace the champion (the run tagged `production`)? If so, move the tag.

    Steps:
      start   find the candidate (the --candidate run, else the run whose end triggered this one, else the latest
              successful FashionFlow run) and the champion (the newest successful run carrying the tag); read their
              profiles and evaluation reports (plain data)
      decide  apply every rule of the promotion rules (`configs/promotion/default.yaml`, typed by
              `fmnist.promotion.PromotionRules`); the decision, with every rule's value, is an artifact; card: champion
              and candidate side by side
      apply   promoted: move the tag to the candidate and record on it who, when and which PromoteFlow run decided
              (tags `promoted_by:`, `promoted_at:`, `promotion:`); refused: leave the champion untouched
      end     print the verdict and the failed rules

    `--rollback` re-promotes an earlier run on purpose: the comparison with the champion is skipped (the earlier run
    is expected to be worse than the one it replaces), the profile and absolute rules still apply, and the decision
    records that it was a rollback.
    """

    rules = Config(
        "rules",
        default=str(DEFAULT_RULES_PATH),
        parser=parse_rules,
        help="Promotion rules (YAML), validated before any step runs; default configs/promotion/default.yaml.",
    )
    candidate = Parameter(
        "candidate",
        default="",
        help="FashionFlow run to judge, 'FashionFlow/<run-id>' or the run id; default: the run that triggered this"
        " one, else the latest successful FashionFlow run.",
    )
    rollback = Parameter(
        "rollback",
        type=bool,
        default=False,
        help="Re-promote an earlier run: skip the comparison with the champion, keep every other rule.",
    )

    @property
    def policy(self) -> PromotionRules:
        """The promotion rules, typed (already validated when Metaflow parsed `rules`)."""
        return load_rules(dict(self.rules))

    @step
    def start(self):
        """Find the candidate and the champion and read their profiles and evaluation reports."""
        candidate = find_candidate(str(self.candidate), getattr(current, "trigger", None))
        champion = find_champion(self.policy.tag, candidate.path_components[0])
        self.candidate_facts = asdict(run_facts(candidate))
        self.champion_facts = asdict(run_facts(champion)) if champion is not None else None
        self.candidate_run, self.champion_run = candidate.pathspec, champion.pathspec if champion else None
        print(f"candidate {self.candidate_run}; champion ({self.policy.tag}) {self.champion_run or 'none yet'}")
        self.next(self.decide)

    @card(type="blank")
    @step
    def decide(self):
        """Apply every promotion rule; the decision (each rule's values and verdict) is an artifact and a card."""
        candidate = RunFacts(**self.candidate_facts)
        champion = RunFacts(**self.champion_facts) if self.champion_facts else None
        decision = decide(candidate, champion, self.policy, rollback=bool(self.rollback))
        self.decision = {**decision.to_dict(), "decided_by": current.username, "decided_at": now_utc()}
        self.promote = decision.promote
        current.card.extend(decision_card(decision, candidate, champion))
        self.next(self.apply)

    @step
    def apply(self):
        """Promoted: move the tag to the candidate, recording who, when and this decision; refused: change nothing."""
        self.promotion = f"{current.flow_name}/{current.run_id}"
        if self.promote:
            self.retired = move_tag(
                self.policy.tag, self.candidate_run, self.promotion, self.decision["decided_by"], now_utc()
            )
        else:
            self.retired = []
        self.next(self.end)

    @step
    def end(self):
        """Print the verdict: promoted (and which run lost the tag) or refused, with every failed rule."""
        print(self.decision["summary"])
        for check in self.decision["checks"]:
            mark = "PASS" if check["passed"] else "FAIL"
            print(f"  {mark if check['applied'] else 'skip'} {check['rule']}: {check['reason']}")
        if self.promote and self.candidate_run in self.retired:  # a promotion at the same time, decided later, won
            print(f"promoted, but a newer promotion holds the {self.decision['tag']!r} tag; untagged: {self.retired}")
        elif self.promote:
            print(f"{self.candidate_run} is now tagged {self.decision['tag']!r}; untagged: {self.retired or 'none'}")
        else:
            print(f"refused: the {self.decision['tag']!r} tag stays on {self.champion_run or 'no run'}")
        for line in card_hint("card", __file__, current.flow_name, current.run_id, "decide", current.username):
            print(line)


if __name__ == "__main__":
    PromoteFlow()
