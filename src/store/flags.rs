//! Reading and flipping the control flags row (`control_flags`, id = 1).

use sea_orm::{ActiveValue::Set, EntityTrait, IntoActiveModel};

use super::entities::control_flags;
use super::{Context, StoreError};
use crate::model::Flags;

/// A change to the flags; `None` leaves a flag as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlagChange {
    pub paused: Option<bool>,
    pub killed: Option<bool>,
    pub proof_mode: Option<bool>,
}

impl crate::store::handles::Flags<'_> {
    /// The flags as they are now. A missing row (deleted by hand) reads as the safe defaults.
    pub async fn get(self) -> Result<Flags, StoreError> {
        let row = control_flags::Entity::find_by_id(1).one(&self.store.db).await.doing("reading control_flags")?;
        Ok(match row {
            Some(r) => Flags { paused: r.paused, killed: r.killed, proof_mode: r.proof_mode },
            None => Flags { paused: false, killed: false, proof_mode: true },
        })
    }

    /// Applies a change and returns the flags after it.
    pub async fn set_flags(self, change: FlagChange) -> Result<Flags, StoreError> {
        let txn = self.store.begin_write().await?;
        let current = control_flags::Entity::find_by_id(1).one(&txn).await.doing("reading control_flags")?;
        let row = match current {
            Some(row) => row,
            None => {
                let fresh = control_flags::ActiveModel {
                    id: Set(1),
                    paused: Set(false),
                    killed: Set(false),
                    proof_mode: Set(true),
                    updated_at: Set(self.store.now()),
                };
                control_flags::Entity::insert(fresh)
                    .exec_with_returning(&txn)
                    .await
                    .doing("recreating control_flags")?
            }
        };
        let mut am = row.into_active_model();
        if let Some(v) = change.paused {
            am.paused = Set(v);
        }
        if let Some(v) = change.killed {
            am.killed = Set(v);
        }
        if let Some(v) = change.proof_mode {
            am.proof_mode = Set(v);
        }
        am.updated_at = Set(self.store.now());
        let row = control_flags::Entity::update(am).exec(&txn).await.doing("updating control_flags")?;
        txn.commit().await.doing("committing control_flags")?;
        Ok(Flags { paused: row.paused, killed: row.killed, proof_mode: row.proof_mode })
    }
}
