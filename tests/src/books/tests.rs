//! Given a saga's end and its rows, when judged, then what is wrong.

use super::*;
use crate::orders::order;

fn input() -> OrderInput {
    let req = order(
        "cust-alice",
        &[("sku-widget", 2), ("sku-gadget", 1), ("sku-widget", 1)],
        900,
    );
    OrderInput {
        customer_id: req.customer_id,
        items: req.items,
        amount_cents: req.amount_cents,
        currency: req.currency,
    }
}

fn row(status: &str, with_data: bool) -> Row {
    let i = input();
    Row {
        status: status.to_owned(),
        customer: with_data.then(|| i.customer_id.clone()),
        amount: with_data.then_some(i.amount_cents),
        lines: with_data.then(|| merged(&i)),
    }
}

#[test]
fn a_completed_saga_needs_its_order_approved_charged_once_and_reserved() {
    let (o, p, r) = (
        row("APPROVED", true),
        row("CHARGED", true),
        row("RESERVED", true),
    );
    assert!(judge("COMPLETED", &input(), Some(&o), Some(&p), Some(&r)).is_empty());
    assert_eq!(
        merged(&input()),
        [("sku-gadget".to_owned(), 1), ("sku-widget".to_owned(), 3)]
    );

    let refunded = row("REFUNDED", true);
    let twice = Row {
        amount: Some(1800),
        ..row("CHARGED", true)
    };
    let doubled = Row {
        lines: Some(vec![("sku-gadget".into(), 2), ("sku-widget".into(), 6)]),
        ..row("RESERVED", true)
    };
    assert_eq!(
        judge("COMPLETED", &input(), Some(&o), Some(&refunded), Some(&r)),
        [r#"COMPLETED saga: payment REFUNDED, expected ["CHARGED"]"#]
    );
    assert_eq!(
        judge("COMPLETED", &input(), Some(&o), Some(&twice), Some(&r)),
        ["payment of Some(1800) cents, not 900"]
    );
    assert_eq!(
        judge("COMPLETED", &input(), Some(&o), Some(&p), Some(&doubled)).len(),
        1
    );
    assert_eq!(
        judge("COMPLETED", &input(), Some(&o), Some(&p), None).len(),
        1
    );
}

#[test]
fn a_compensated_saga_has_everything_undone_or_never_done() {
    let i = input();
    let undone = (
        row("CANCELLED", true),
        row("REFUNDED", true),
        row("RELEASED", true),
    );
    let tombstones = (
        row("CANCELLED", false),
        row("VOIDED", false),
        row("VOIDED", false),
    );
    assert!(
        judge(
            "COMPENSATED",
            &i,
            Some(&undone.0),
            Some(&undone.1),
            Some(&undone.2)
        )
        .is_empty()
    );
    assert!(
        judge(
            "COMPENSATED",
            &i,
            Some(&tombstones.0),
            Some(&tombstones.1),
            Some(&tombstones.2)
        )
        .is_empty()
    );
    assert!(judge("COMPENSATED", &i, None, None, None).is_empty());

    let still_charged = row("CHARGED", true);
    let still_reserved = row("RESERVED", true);
    let approved = row("APPROVED", true);
    assert_eq!(
        judge(
            "COMPENSATED",
            &i,
            Some(&approved),
            Some(&still_charged),
            Some(&still_reserved)
        )
        .len(),
        3
    );
}

#[test]
fn sagas_still_in_flight_or_paused_are_not_judged() {
    assert!(judge("RUNNING", &input(), None, None, None).is_empty());
    assert!(judge("COMPENSATION_FAILED", &input(), None, None, None).is_empty());
}
