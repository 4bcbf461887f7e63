//! Everything a system test checks once its sagas have settled, in one
//! place, so each test reports the same things the same way:
//!
//! - [`reconcile`](crate::reconcile): the operator's comparison of every
//!   finished saga's steps with what each participant says it did (any saga
//!   type);
//! - [`books`](crate::books): each order saga's final state against its
//!   business rows;
//! - [`invariants`](crate::invariants): the totals across the databases;
//!   and, when the system runs the trip saga, [`trips`](crate::trips): each
//!   trip's end against its seat, room, car, payment and itinerary, and
//!   every resource's count (its violations are counted among the
//!   invariants');
//! - [`audit`](crate::audit): history gap-free, no transition recorded twice.
//!
//! `double_applied` in the tests' summary lines is the number of sagas the
//! first two find wrong: a change applied twice (or applied where it should
//! have been undone, or undone where it should stand) shows up there with
//! the saga it belongs to.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::audit::{self, Audit};
use crate::books::{self, Books};
use crate::invariants::{self, Report};
use crate::reconcile::{self, Reconciled};
use crate::system::System;
use crate::trips;

#[derive(Debug)]
pub struct Checks {
    pub audit: Audit,
    pub reconciled: Reconciled,
    pub books: Books,
    pub invariants: Report,
    /// Trip sagas whose end was checked against the trip participants
    /// (0 when the system runs no trips).
    pub trips: usize,
}

impl Checks {
    /// Read everything (the sagas should have settled).
    pub async fn run(sys: &System) -> anyhow::Result<Checks> {
        let mut invariants =
            invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
        let mut trips_checked = 0;
        if sys.runs_trips() {
            let trips = trips::check_all(sys).await?;
            trips_checked = trips.sagas;
            invariants.violations.extend(trips.violations);
        }
        Ok(Checks {
            audit: audit::audit(&sys.dbs).await?,
            reconciled: reconcile::run(sys, &[]).await?,
            books: books::check(&sys.dbs).await?,
            invariants,
            trips: trips_checked,
        })
    }

    /// Sagas the reconciliation or the books find wrong, each once.
    pub fn wrong_sagas(&self) -> BTreeSet<Uuid> {
        self.reconciled
            .wrong
            .keys()
            .chain(self.books.wrong.keys())
            .copied()
            .collect()
    }

    /// What the summary lines call `double_applied`.
    pub fn double_applied(&self) -> usize {
        self.wrong_sagas().len()
    }

    /// `ok` or `FAILED`, for summary lines.
    pub fn invariants_word(&self) -> &'static str {
        if self.invariants.ok() { "ok" } else { "FAILED" }
    }

    /// One line per problem found, at most `n`.
    pub fn problems(&self, n: usize) -> Vec<String> {
        let reconciled = self.reconciled.wrong.values().flatten().cloned();
        let books = self
            .books
            .wrong
            .iter()
            .map(|(id, why)| format!("books of saga {id}: {}", why.join("; ")));
        reconciled
            .chain(books)
            .chain(self.invariants.violations.iter().cloned())
            .chain(self.audit.advanced_twice.iter().cloned())
            .chain(self.audit.history_gaps.iter().cloned())
            .take(n)
            .collect()
    }

    /// One line with the counts, for the logs.
    pub fn describe(&self) -> String {
        format!(
            "checks: reconciled finished={} in_flight={} mismatched={}; books checked={} skipped={} wrong={}; invariants {} (trips checked={}); advanced_twice={} history_gaps={}",
            self.reconciled.finished,
            self.reconciled.in_flight,
            self.reconciled.wrong.len(),
            self.books.checked,
            self.books.skipped,
            self.books.wrong.len(),
            self.invariants_word(),
            self.trips,
            self.audit.advanced_twice.len(),
            self.audit.history_gaps.len(),
        )
    }

    /// Fail (with the problems) unless every check passed and every saga
    /// was finished when reconciled.
    pub fn assert_ok(&self, sys: &System) {
        let problems = self.problems(20);
        let logs = sys.log_dir.display();
        assert_eq!(self.double_applied(), 0, "{problems:#?}; logs in {logs}");
        assert!(self.invariants.ok(), "{problems:#?}; logs in {logs}");
        assert!(self.audit.advanced_twice.is_empty(), "{problems:#?}");
        assert!(self.audit.history_gaps.is_empty(), "{problems:#?}");
        assert_eq!(self.reconciled.in_flight, 0, "sagas still in flight");
        assert_eq!(self.reconciled.forgotten, 0, "sagas older than the inbox");
        assert!(self.reconciled.finished > 0, "nothing was reconciled");
    }
}
