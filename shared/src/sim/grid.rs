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
    /// Ids are visited in the order they are filed (by cell, then in the order filed), so
    /// the order is deterministic for a given world.
    ///
    /// A row's cells are adjacent in `filed`, so each row the circle crosses is one slice:
    /// the cells under the circle's chord through that row (one loop per row, not per cell).
    pub fn for_each_within(&self, center: Vec2, radius: f32, mut visit: impl FnMut(EntityId)) {
        if self.starts.is_empty() {
            return;
        }
        let radius_sq = radius * radius;
        let rows = self.row_of(center.y - radius)..=self.row_of(center.y + radius);
        for y in rows {
            let half = self.half_chord(center.y, radius_sq, y);
            let row = y * self.columns;
            let first = row + self.column_of(center.x - half);
            let last = row + self.column_of(center.x + half);
            let (from, to) = (self.starts[first] as usize, self.starts[last + 1] as usize);
            for f in &self.filed[from..to] {
                if !f.id.is_null() && f.position.distance_squared(center) <= radius_sq {
                    visit(f.id);
                }
            }
        }
    }

    /// Half the width of the circle at its widest within row `y`, widened a little so
    /// rounding never leaves out a cell holding an entity on the circle's edge.
    ///
    /// Positions outside the grid are filed in its edge cells, so the first and the last
    /// row reach out to infinity.
    fn half_chord(&self, center_y: f32, radius_sq: f32, y: usize) -> f32 {
        let slack = self.cell_size * 1e-3;
        let top = if y == 0 {
            f32::NEG_INFINITY
        } else {
            y as f32 * self.cell_size - slack
        };
        let bottom = if y + 1 == self.rows {
            f32::INFINITY
        } else {
            (y + 1) as f32 * self.cell_size + slack
        };
        let dy = if center_y < top {
            top - center_y
        } else if center_y > bottom {
            center_y - bottom
        } else {
            0.0
        };
        (radius_sq - dy * dy).max(0.0).sqrt() + slack
    }

    fn cell_index(&self, position: Vec2) -> u32 {
        (self.row_of(position.y) * self.columns + self.column_of(position.x)) as u32
    }

    /// The column holding `x`, clamped into the grid (so is every position filed).
    fn column_of(&self, x: f32) -> usize {
        clamped_cell(x, self.cell_size, self.columns)
    }

    /// The row holding `y`, clamped into the grid.
    fn row_of(&self, y: f32) -> usize {
        clamped_cell(y, self.cell_size, self.rows)
    }
}

/// The cell of `n` along one axis holding coordinate `v` (NaN goes to the first).
///
/// The cast truncates and saturates: a negative quotient (and NaN) goes to 0, a positive
/// one rounds down, so no `floor` is needed (without SSE4.1 that is a call into libm).
fn clamped_cell(v: f32, cell_size: f32, n: usize) -> usize {
    ((v / cell_size) as usize).min(n - 1)
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
    use proptest::prelude::*;
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

    proptest! {
        /// Whatever the circle (over the edge, between cells, larger than the arena), a
        /// query visits exactly the entities within it, in the order they are filed: what
        /// testing every entity would find.
        #[test]
        fn a_query_finds_what_testing_every_entity_finds(
            positions in prop::collection::vec((-20.0f32..120.0, -20.0f32..120.0), 0..200),
            center in (-40.0f32..140.0, -40.0f32..140.0),
            radius in prop_oneof![0.0f32..40.0, 0.0f32..200.0, Just(8.0f32), Just(16.0f32)],
        ) {
            let mut ids: SlotMap<EntityId, ()> = SlotMap::with_key();
            let items: Vec<(EntityId, Vec2)> = positions
                .iter()
                .map(|&(x, y)| (ids.insert(()), Vec2::new(x, y)))
                .collect();
            let mut grid = Grid::new(100.0, 8.0);
            grid.fill(items.iter().copied());
            let center = Vec2::new(center.0, center.1);
            let expected: Vec<EntityId> = grid
                .filed
                .iter()
                .filter(|f| f.position.distance_squared(center) <= radius * radius)
                .map(|f| f.id)
                .collect();
            let mut seen = Vec::new();
            grid.for_each_within(center, radius, |id| seen.push(id));
            prop_assert_eq!(seen, expected);
        }
    }
}
