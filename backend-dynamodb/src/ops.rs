//! The [`SessionStore`] operations, each one DynamoDB request (a principal
//! revoke is one query page per 1 MB plus one delete per session).
//!
//! Every write is conditional on the item existing and being live by the
//! store's clock, so nothing in flight can bring back a deleted or expired
//! session; a failed save brings back the current item
//! (`ReturnValuesOnConditionCheckFailure=ALL_OLD`) so a conflict costs no
//! extra read.
//!
//! Why this file is long: every operation of the store is one conditional
//! request built from the same expression parts; they read best side by side.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use offstate_core::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, PrincipalChange, Record, SaveOutcome,
    SessionKey, SessionStore, StoreError, Timestamp, TouchOutcome, Version,
};

use crate::config::DYNAMODB_MAX_ITEM_BYTES;
use crate::error::{is_item_too_large, map_sdk, map_service};
use crate::item::{self, Item, NUMBER_BYTES};
use crate::store::DynamoDbStore;

/// The liveness half of every write condition: no deadline has passed.
const LIVE: &str =
    "(attribute_not_exists(#i) OR #i > :now) AND (attribute_not_exists(#a) OR #a > :now)";

/// How often a save is sent again because the stored idle deadline was
/// later than the one it asked for.
const SAVE_ATTEMPTS: usize = 4;

/// What one conditional save found.
enum Attempt {
    /// A final outcome.
    Done(SaveOutcome),
    /// The session is live at the expected version but keeps this idle
    /// deadline (later than asked, or none): send the save again with it.
    LaterIdle(Option<Timestamp>),
}

/// DynamoDB's limit on one expression string.
const EXPRESSION_LIMIT: usize = 4 * 1024;

/// What the per-key clauses of a save may take: the limit less the fixed
/// clauses (`SET `, version, idle, TTL, principal, `REMOVE ` and theirs),
/// which take under 100 bytes.
const KEYED_BUDGET: usize = EXPRESSION_LIMIT - 256;

/// The update paths of a save that sets `sets` entries of the data map and
/// removes `removes`, one placeholder each.
fn keyed_clauses(sets: usize, removes: usize) -> (Vec<String>, Vec<String>) {
    (
        (0..sets).map(|n| format!("#d.#s{n} = :s{n}")).collect(),
        (0..removes).map(|n| format!("#d.#r{n}")).collect(),
    )
}

/// How long the keyed clauses are once joined with `, `.
fn clauses_len(set: &[String], remove: &[String]) -> usize {
    set.iter().chain(remove).map(|c| c.len() + 2).sum()
}

/// Expression attribute names and values under construction.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, placeholder: &str, name: &str) {
        self.names.insert(placeholder.to_owned(), name.to_owned());
    }

    fn value(&mut self, placeholder: &str, value: AttributeValue) {
        self.values.insert(placeholder.to_owned(), value);
    }
}

impl DynamoDbStore {
    fn sdk<E, R>(&self, error: SdkError<E, R>) -> StoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        map_sdk(error, self.settings.timeout)
    }

    fn key_value(&self, key: &SessionKey) -> AttributeValue {
        AttributeValue::S(self.store_key(key))
    }

    /// Names and values every conditional write uses: key, deadlines, now.
    fn base_expr(&self, now: Timestamp) -> Expr {
        let names = &self.settings.names;
        let mut expr = Expr::default();
        expr.name("#k", &names.key);
        expr.name("#i", &names.idle);
        expr.name("#a", &names.absolute);
        expr.value(":now", item::number(now.as_millis()));
        expr
    }

    /// Whether an item is live at `now`; an item whose deadlines cannot be
    /// read counts as live (it is there, and it is not ours to judge).
    fn is_live(&self, item: &Item, now: Timestamp) -> bool {
        item::deadlines(&self.settings.names, item).map_or(true, |d| !d.is_expired(now))
    }

    fn limit(&self) -> usize {
        self.settings.max_item_bytes
    }

    /// What a save's item weighs at least: the key, the fixed attributes,
    /// and the entries the change sets. The rest of the data map is not
    /// known without a read; DynamoDB's own 400 KB check catches that.
    fn save_size_floor(&self, key: &SessionKey, change: &Change) -> usize {
        let names = &self.settings.names;
        let fixed = [
            &names.version,
            &names.created,
            &names.idle,
            &names.absolute,
            &names.ttl,
        ]
        .iter()
        .map(|n| n.len() + NUMBER_BYTES)
        .sum::<usize>();
        let data = 3 + change
            .set
            .iter()
            .map(|(k, v)| k.len() + v.len() + 1)
            .sum::<usize>();
        let principal = match &change.principal {
            PrincipalChange::Set(p) => names.principal.len() + p.len(),
            _ => 0,
        };
        names.key.len() + self.store_key(key).len() + names.data.len() + data + fixed + principal
    }
}

impl SessionStore for DynamoDbStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let s = &self.settings;
        let output = self
            .client
            .get_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .consistent_read(s.consistent_reads)
            .send()
            .await
            .map_err(|e| self.sdk(e))?;
        let Some(found) = output.item else {
            return Ok(None);
        };
        let record = item::decode(&s.names, &found).map_err(StoreError::corrupt)?;
        // DynamoDB deletes expired items only eventually (within days):
        // the deadline is checked here, on every read.
        Ok((!record.is_expired(now)).then(|| Arc::new(record)))
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let s = &self.settings;
        let encoded = item::encode(&s.names, &self.store_key(key), record);
        let size = item::item_size(&encoded);
        if size > self.limit() {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limit(),
            });
        }
        let expr = self.base_expr(now);
        let result = self
            .client
            .put_item()
            .table_name(&s.table)
            .set_item(Some(encoded))
            .condition_expression(
                "attribute_not_exists(#k) OR (attribute_exists(#i) AND #i <= :now) \
                 OR (attribute_exists(#a) AND #a <= :now)",
            )
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(CreateOutcome::Created),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(CreateOutcome::Exists)
            }
            Err(SdkError::ServiceError(e)) if is_item_too_large(e.err()) => {
                Err(StoreError::TooLarge {
                    size,
                    limit: self.limit().min(DYNAMODB_MAX_ITEM_BYTES),
                })
            }
            Err(e) => Err(self.sdk(e)),
        }
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let floor = self.save_size_floor(key, change);
        if floor > self.limit() {
            return Err(StoreError::TooLarge {
                size: floor,
                limit: self.limit(),
            });
        }
        // An update expression cannot take a maximum, so the write is
        // conditional on the stored idle deadline not being later; when it
        // is (a touch, or a writer whose clock runs ahead, got there first)
        // the save is sent again with that deadline. Rare, and bounded.
        let mut idle = change.deadlines.idle;
        for _ in 0..SAVE_ATTEMPTS {
            match self.save_once(key, change, idle, now).await? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::LaterIdle(stored) => idle = stored,
            }
        }
        Err(StoreError::backend(
            "the stored idle deadline kept moving during a save",
        ))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        let s = &self.settings;
        let mut expr = self.base_expr(now);
        expr.name("#t", &s.names.ttl);
        expr.value(":idle", item::number(idle_deadline.as_millis()));
        // The absolute deadline may be earlier; the TTL then fires late,
        // which is harmless (reads check deadlines), never early.
        expr.value(":ttl", item::number(idle_deadline.as_secs_ceil()));
        // Only over an earlier idle deadline: a late touch never shortens
        // a session, and one without an idle deadline keeps having none.
        let result = self
            .client
            .update_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .update_expression("SET #i = :idle, #t = :ttl")
            .condition_expression(format!(
                "attribute_exists(#k) AND {LIVE} AND attribute_exists(#i) AND #i < :idle"
            ))
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(TouchOutcome::Touched),
            Err(SdkError::ServiceError(e)) => match e.into_err() {
                // Refused: gone, or live with a later (or no) idle deadline,
                // which is a touch that had nothing to do.
                UpdateItemError::ConditionalCheckFailedException(failed) => Ok(match failed.item {
                    Some(item) if self.is_live(&item, now) => TouchOutcome::Touched,
                    _ => TouchOutcome::Gone,
                }),
                other => Err(map_service(other)),
            },
            Err(e) => Err(self.sdk(e)),
        }
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        let s = &self.settings;
        let output = self
            .client
            .delete_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.sdk(e))?;
        Ok(output.attributes.is_some_and(|old| self.is_live(&old, now)))
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let s = &self.settings;
        let mut expr = self.base_expr(now);
        expr.name("#v", &s.names.version);
        expr.value(":expected", item::number(expected.get()));
        let result = self
            .client
            .delete_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .condition_expression(format!(
                "attribute_exists(#k) AND #v = :expected AND {LIVE}"
            ))
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(SdkError::ServiceError(e)) => match e.into_err() {
                DeleteItemError::ConditionalCheckFailedException(failed) => {
                    let Some(current) = failed.item else {
                        return Ok(DeleteOutcome::Gone);
                    };
                    let record = item::decode(&s.names, &current).map_err(StoreError::corrupt)?;
                    if record.is_expired(now) {
                        Ok(DeleteOutcome::Gone)
                    } else if record.version != expected {
                        Ok(DeleteOutcome::Conflict(Arc::new(record)))
                    } else {
                        Err(StoreError::backend(
                            "DynamoDB refused a delete of a live record of the expected version",
                        ))
                    }
                }
                other => Err(map_service(other)),
            },
            Err(e) => Err(self.sdk(e)),
        }
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let items = self.query_principal(principal).await?;
        let mut keys: Vec<SessionKey> = items
            .iter()
            .filter(|item| self.is_live(item, now))
            .filter_map(|item| self.session_key_of(item))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        let s = &self.settings;
        let items = self.query_principal(principal).await?;
        let mut revoked = 0;
        for found in items {
            let Some(pk) = found.get(&s.names.key).cloned() else {
                continue;
            };
            // Only if it still belongs to this principal: the index may lag
            // behind a session that was detached or re-attached meanwhile.
            let result = self
                .client
                .delete_item()
                .table_name(&s.table)
                .key(&s.names.key, pk)
                .condition_expression("#p = :p")
                .expression_attribute_names("#p", &s.names.principal)
                .expression_attribute_values(":p", AttributeValue::S(principal.to_owned()))
                .return_values(ReturnValue::AllOld)
                .send()
                .await;
            match result {
                Ok(output) => {
                    if output.attributes.is_some_and(|old| self.is_live(&old, now)) {
                        revoked += 1;
                    }
                }
                Err(SdkError::ServiceError(e))
                    if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) => {}
                Err(e) => return Err(self.sdk(e)),
            }
        }
        Ok(revoked)
    }

    fn capabilities(&self) -> Capabilities {
        // A GSI is eventually consistent: a session attached a moment ago
        // may be missing from a listing (and so survive a revoke issued in
        // the same instant).
        Capabilities::full().with_consistent_principal_index(false)
    }

    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn server_address(&self) -> Option<&str> {
        self.settings.address.as_deref()
    }
}

impl DynamoDbStore {
    /// Tells a failed save's cause from the item DynamoDB returned.
    /// One conditional save that writes the idle deadline `idle`.
    async fn save_once(
        &self,
        key: &SessionKey,
        change: &Change,
        idle: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Attempt, StoreError> {
        let s = &self.settings;
        let mut expr = self.base_expr(now);
        let mut set = Vec::new();
        let mut remove = Vec::new();
        let removals: Vec<&String> = change
            .remove
            .iter()
            .filter(|k| !change.set.contains_key(*k))
            .collect();
        if !change.set.is_empty() || !removals.is_empty() {
            expr.name("#d", &s.names.data);
        }
        let (set_paths, remove_paths) = keyed_clauses(change.set.len(), removals.len());
        if clauses_len(&set_paths, &remove_paths) > KEYED_BUDGET {
            // DynamoDB refuses an expression over 4 KB (moto does not), so
            // many changed keys are written as the whole data map instead,
            // from a strongly consistent read, under the same condition on
            // the version: a write in between is a conflict as usual.
            let Some(current) = self.read_live(key, now).await? else {
                return Ok(Attempt::Done(SaveOutcome::Gone));
            };
            if current.version != change.expected {
                return Ok(Attempt::Done(SaveOutcome::Conflict(Arc::new(current))));
            }
            let mut data = current.data;
            for k in &change.remove {
                data.remove(k);
            }
            for (k, v) in &change.set {
                data.insert(k.clone(), v.clone());
            }
            let map = data
                .into_iter()
                .map(|(k, v)| {
                    (
                        item::entry_name(&k).into_owned(),
                        AttributeValue::B(Blob::new(v)),
                    )
                })
                .collect();
            expr.name("#d", &s.names.data);
            expr.value(":data", AttributeValue::M(map));
            set.push("#d = :data".to_owned());
        } else {
            // Map entries by path, with a placeholder per key: session keys
            // may be any string, reserved words and dots included.
            for ((n, (k, v)), path) in change.set.iter().enumerate().zip(set_paths) {
                expr.name(&format!("#s{n}"), &item::entry_name(k));
                expr.value(&format!(":s{n}"), AttributeValue::B(Blob::new(v.clone())));
                set.push(path);
            }
            for ((n, k), path) in removals.iter().enumerate().zip(remove_paths) {
                expr.name(&format!("#r{n}"), &item::entry_name(k));
                remove.push(path);
            }
        }
        expr.name("#v", &s.names.version);
        expr.value(":expected", item::number(change.expected.get()));
        expr.value(":next", item::number(change.expected.next().get()));
        set.push("#v = :next".to_owned());
        // The absolute deadline is never rewritten. A new idle deadline is
        // written only over an earlier one (no idle deadline is the latest).
        let mut condition = format!("attribute_exists(#k) AND #v = :expected AND {LIVE}");
        match idle {
            Some(at) => {
                expr.value(":idle", item::number(at.as_millis()));
                set.push("#i = :idle".to_owned());
                condition.push_str(" AND attribute_exists(#i) AND #i <= :idle");
            }
            None => remove.push("#i".to_owned()),
        }
        // The TTL follows the idle deadline (late when the absolute one is
        // earlier, which is harmless: reads check deadlines), never early.
        expr.name("#t", &s.names.ttl);
        match idle.or(change.deadlines.absolute) {
            Some(at) => {
                expr.value(":ttl", item::number(at.as_secs_ceil()));
                set.push("#t = :ttl".to_owned());
            }
            None => remove.push("#t".to_owned()),
        }
        match &change.principal {
            PrincipalChange::Set(p) => {
                expr.name("#p", &s.names.principal);
                expr.value(":p", AttributeValue::S(p.clone()));
                set.push("#p = :p".to_owned());
            }
            PrincipalChange::Clear => {
                expr.name("#p", &s.names.principal);
                remove.push("#p".to_owned());
            }
            _ => {}
        }
        let mut update = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            update.push_str(" REMOVE ");
            update.push_str(&remove.join(", "));
        }
        let result = self
            .client
            .update_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Attempt::Done(SaveOutcome::Saved(change.expected.next()))),
            Err(SdkError::ServiceError(e)) => match e.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    self.failed_save(failed.item, change, now)
                }
                other if is_item_too_large(&other) => Err(StoreError::TooLarge {
                    // DynamoDB does not say by how much: at least one byte.
                    size: DYNAMODB_MAX_ITEM_BYTES + 1,
                    limit: self.limit().min(DYNAMODB_MAX_ITEM_BYTES),
                }),
                other => Err(map_service(other)),
            },
            Err(e) => Err(self.sdk(e)),
        }
    }

    /// The record under `key` if it is live, read strongly consistent.
    async fn read_live(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        let s = &self.settings;
        let output = self
            .client
            .get_item()
            .table_name(&s.table)
            .key(&s.names.key, self.key_value(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk(e))?;
        let Some(found) = output.item else {
            return Ok(None);
        };
        let record = item::decode(&s.names, &found).map_err(StoreError::corrupt)?;
        Ok((!record.is_expired(now)).then_some(record))
    }

    fn failed_save(
        &self,
        current: Option<Item>,
        change: &Change,
        now: Timestamp,
    ) -> Result<Attempt, StoreError> {
        let Some(current) = current else {
            return Ok(Attempt::Done(SaveOutcome::Gone));
        };
        let record = item::decode(&self.settings.names, &current).map_err(StoreError::corrupt)?;
        if record.is_expired(now) {
            Ok(Attempt::Done(SaveOutcome::Gone))
        } else if record.version != change.expected {
            Ok(Attempt::Done(SaveOutcome::Conflict(Arc::new(record))))
        } else {
            // Live at the expected version: the stored idle deadline is
            // later than the one asked for (or there is none). Keep it.
            Ok(Attempt::LaterIdle(
                record.deadlines.extended_to(change.deadlines.idle).idle,
            ))
        }
    }

    /// Every item of the principal index under this store's prefix, all
    /// pages.
    async fn query_principal(&self, principal: &str) -> Result<Vec<Item>, StoreError> {
        let s = &self.settings;
        let mut condition = "#p = :p".to_owned();
        let mut expr = Expr::default();
        expr.name("#p", &s.names.principal);
        expr.value(":p", AttributeValue::S(principal.to_owned()));
        if !s.prefix.is_empty() {
            condition.push_str(" AND begins_with(#k, :prefix)");
            expr.name("#k", &s.names.key);
            expr.value(":prefix", AttributeValue::S(s.prefix.clone()));
        }
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&s.table)
                .index_name(&s.names.principal_index)
                .key_condition_expression(&condition)
                .set_expression_attribute_names(Some(expr.names.clone()))
                .set_expression_attribute_values(Some(expr.values.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.sdk(e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        Ok(items)
    }

    /// The session key of an index item, if it is one of this store's.
    fn session_key_of(&self, found: &Item) -> Option<SessionKey> {
        let s = &self.settings;
        let Some(AttributeValue::S(pk)) = found.get(&s.names.key) else {
            return None;
        };
        let stored = pk.strip_prefix(s.prefix.as_str())?;
        match SessionKey::from_stored(stored) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::debug!(%pk, %error, "skipping an index entry that is not a session key");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest update a save can send on the keyed path stays under
    /// DynamoDB's 4 KB, and a change too large for it takes the whole-map
    /// path instead.
    #[test]
    fn keyed_updates_fit_in_an_expression_or_are_not_used() {
        let fixed = "SET #v = :next, #i = :idle, #t = :ttl, #p = :p REMOVE #i, #t, #p, ";
        for sets in [0, 10, 100, 150, 200, 400, 512] {
            for removes in [0, 10, 100, 512] {
                let (set, remove) = keyed_clauses(sets, removes);
                let keyed = clauses_len(&set, &remove);
                if keyed <= KEYED_BUDGET {
                    assert!(
                        keyed + fixed.len() <= EXPRESSION_LIMIT,
                        "{sets} sets, {removes} removes"
                    );
                }
            }
        }
        let (set, remove) = keyed_clauses(400, 0);
        assert!(
            clauses_len(&set, &remove) > KEYED_BUDGET,
            "400 keys must take the whole-map path"
        );
        let (set, remove) = keyed_clauses(20, 5);
        assert!(
            clauses_len(&set, &remove) <= KEYED_BUDGET,
            "a cart's change stays keyed"
        );
    }
}
