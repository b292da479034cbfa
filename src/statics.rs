//! CCP's static data in memory: every solar system (name, security, constellation, region),
//! constellation, region and item type (with its group), loaded once from the store at startup. Names of
//! systems, regions and types come from here; the live hub uses it to know each killmail's
//! region, zKillboard's websocket its constellation and the ships' groups.

use std::collections::HashMap;

use sqlx::PgPool;

/// The static tables, in memory: every solar system, constellation, region and item type.
#[derive(Debug, Default)]
pub struct Statics {
    pub systems: HashMap<i64, System>,
    pub regions: HashMap<i64, String>,
    /// Constellation id → (name, region id).
    pub constellations: HashMap<i64, (String, i64)>,
    /// Type id → (name, group name).
    pub types: HashMap<i64, (Option<String>, Option<String>)>,
    /// Type id → group id.
    pub groups: HashMap<i64, i64>,
}

#[derive(Debug, Clone)]
pub struct System {
    pub name: String,
    pub security_status: Option<f64>,
    pub region_id: i64,
    pub constellation_id: i64,
}

impl Statics {
    pub async fn load(pool: &PgPool) -> sqlx::Result<Self> {
        let systems = crate::db::statics::solar_systems(pool)
            .await?
            .into_iter()
            .map(|s| {
                (
                    s.id,
                    System {
                        name: s.name,
                        security_status: s.security_status,
                        region_id: s.region_id,
                        constellation_id: s.constellation_id,
                    },
                )
            })
            .collect();
        let regions = crate::db::statics::regions(pool)
            .await?
            .into_iter()
            .collect();
        let constellations = crate::db::statics::constellations(pool)
            .await?
            .into_iter()
            .map(|(id, name, region)| (id, (name, region)))
            .collect();
        let item_types = crate::db::statics::item_types(pool).await?;
        let groups = item_types
            .iter()
            .map(|(id, .., group)| (*id, *group))
            .collect();
        let types = item_types
            .into_iter()
            .map(|(id, name, group, _)| (id, (name, group)))
            .collect();
        Ok(Self {
            systems,
            regions,
            constellations,
            types,
            groups,
        })
    }

    pub fn region_of(&self, solar_system_id: i64) -> Option<i64> {
        self.systems.get(&solar_system_id).map(|s| s.region_id)
    }

    pub fn group_of(&self, type_id: i64) -> Option<i64> {
        self.groups.get(&type_id).copied()
    }

    pub fn constellation_of(&self, solar_system_id: i64) -> Option<i64> {
        self.systems
            .get(&solar_system_id)
            .map(|s| s.constellation_id)
    }

    pub fn type_name(&self, type_id: i64) -> Option<&str> {
        self.types
            .get(&type_id)
            .and_then(|(name, _)| name.as_deref())
    }
}
