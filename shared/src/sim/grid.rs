//! A uniform grid over the arena: neighbour queries in O(nearby), not O(all).

use glam::Vec2;
use slotmap::Key;

use super::EntityId;

/// Entity ids and positions by cell, in one flat list sorted by cell (a cell's entries are
/// a slice of it). Rebuilt from positions every tick: derived state, never part of a
/// snapshot. Its lists keep their capacity, so a steady match rebuilds it without
/// allocating. Positions are filed beside the ids so a query tests distance without
/// looking an entity up.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    cell_size: f32,
    columns: usize,
    rows: usize,
    /// Every entity filed, sorted by cell then order.
    filed: Vec<Filed>,
    /// Where each cell's ids start in `filed`; one more entry than cells.
    starts: Vec<u32>,
}

impl Grid {
    /// A grid covering `[0, size]²` with cells of `cell_size`.
    pub fn new(size: f32, cell_size: f32) -> Self {
        let columns = ((size / cell_size).ceil() as usize).max(1);
        Self {
            cell_size,
            columns,
            rows: columns,
            filed: Vec::new(),
            starts: vec![0; columns * columns + 1],
        }
    }

    /// Whether this grid has no cells yet (a default, or one just deserialized).
    pub fn is_empty_layout(&self) -> bool {
        self.starts.is_empty()
    }

    /// Files `items` in place of what the grid held.
    pub fn fill(&mut self, items: impl Iterator<Item = (EntityId, Vec2)>) {
        self.filed.clear();
        for (id, position) in items {
            let cell = self.cell_index(position);
            let order = self.filed.len() as u32;
            self.filed.push(Filed {
                cell,
                order,
                id,
                position,
            });
        }
        self.index();
    }

    /// Files `id` under the cell holding `position` (clamped into the grid), after what
    /// the grid holds.
    pub fn insert(&mut self, id: EntityId, position: Vec2) {
        let cell = self.cell_index(position);
        let order = self.filed.iter().map(|f| f.order + 1).max().unwrap_or(0);
        self.filed.push(Filed {
            cell,
            order,
            id,
            position,
        });
        self.index();
    }

    /// Sorts the filed ids by cell (in the order filed within one) and finds each
    /// cell's start.
    fn index(&mut self) {
        // Keys are unique, so an unstable sort (which allocates nothing) is deterministic.
        self.filed.sort_unstable_by_key(|f| (f.cell, f.order));
        self.starts.fill(0);
        for f in &self.filed {
            self.starts[f.cell as usize + 1] += 1;
        }
        for i in 1..self.starts.len() {
            self.starts[i] += self.starts[i - 1];
        }
    }

    /// Calls `visit` with the id of every entity filed within `radius` of `center` (the
    /// circle's edge included).
    ///
    /// Cells are visited row by row and ids in the order filed, so the order is
    /// deterministic for a given world.
    pub fn for_each_within(&self, center: Vec2, radius: f32, mut visit: impl FnMut(EntityId)) {
        if self.starts.is_empty() {
            return;
        }
        let radius_sq = radius * radius;
        let (x0, y0) = self.cell_of(center - Vec2::splat(radius));
        let (x1, y1) = self.cell_of(center + Vec2::splat(radius));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let cell = y * self.columns + x;
                let (from, to) = (self.starts[cell] as usize, self.starts[cell + 1] as usize);
                for f in &self.filed[from..to] {
                    if !f.id.is_null() && f.position.distance_squared(center) <= radius_sq {
                        visit(f.id);
                    }
                }
            }
        }
    }

    fn cell_index(&self, position: Vec2) -> u32 {
        let (x, y) = self.cell_of(position);
        (y * self.columns + x) as u32
    }

    fn cell_of(&self, position: Vec2) -> (usize, usize) {
        let clamp = |v: f32, n: usize| ((v / self.cell_size).floor().max(0.0) as usize).min(n - 1);
        (
            clamp(position.x, self.columns),
            clamp(position.y, self.rows),
        )
    }
}

/// One entity's entry.
#[derive(Debug, Clone, Copy)]
struct Filed {
    cell: u32,
    /// The order it was filed in: ties within a cell keep it.
    order: u32,
    id: EntityId,
    position: Vec2,
}

#[cfg(test)]
mod tests {
    use slotmap::SlotMap;

    use super::*;

    #[test]
    fn a_query_visits_the_ids_within_its_circle_in_filing_order() {
        let mut ids: SlotMap<EntityId, ()> = SlotMap::with_key();
        let [a, b, c, d] = [(); 4].map(|()| ids.insert(()));
        let mut grid = Grid::new(100.0, 10.0);
        grid.fill(
            [
                (b, Vec2::new(15.0, 5.0)),
                (a, Vec2::new(5.0, 5.0)),
                (c, Vec2::new(16.0, 6.0)),
            ]
            .into_iter(),
        );
        grid.insert(d, Vec2::new(95.0, 95.0));
        fn near(grid: &Grid, at: Vec2, r: f32) -> Vec<EntityId> {
            let mut seen = Vec::new();
            grid.for_each_within(at, r, |id| seen.push(id));
            seen
        }
        assert_eq!(near(&grid, Vec2::new(5.0, 5.0), 1.0), vec![a]);
        // c is in a cell the circle overlaps but 6.08 m away.
        assert_eq!(near(&grid, Vec2::new(10.0, 5.0), 6.0), vec![a, b]);
        assert_eq!(near(&grid, Vec2::new(10.0, 5.0), 6.1), vec![a, b, c]);
        assert_eq!(near(&grid, Vec2::new(99.0, 99.0), 1.0), vec![]);
        assert_eq!(near(&grid, Vec2::new(99.0, 99.0), 6.0), vec![d]);
        grid.fill(std::iter::empty());
        assert!(near(&grid, Vec2::new(50.0, 50.0), 100.0).is_empty());
    }
}
