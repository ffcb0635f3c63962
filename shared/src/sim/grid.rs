//! A uniform grid over the arena: neighbour queries in O(nearby), not O(all).

use glam::Vec2;
use slotmap::Key;

use super::EntityId;

/// Buckets of entity ids by cell. Rebuilt from positions every tick: derived state, never
/// part of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    cell_size: f32,
    columns: usize,
    rows: usize,
    cells: Vec<Vec<EntityId>>,
}

impl Grid {
    /// A grid covering `[0, size]²` with cells of `cell_size`.
    pub fn new(size: f32, cell_size: f32) -> Self {
        let columns = ((size / cell_size).ceil() as usize).max(1);
        Self {
            cell_size,
            columns,
            rows: columns,
            cells: vec![Vec::new(); columns * columns],
        }
    }

    /// Whether this grid has no cells yet (a default, or one just deserialized).
    pub fn is_empty_layout(&self) -> bool {
        self.cells.is_empty()
    }

    /// Empties every cell, keeping their capacity.
    pub fn clear(&mut self) {
        for cell in &mut self.cells {
            cell.clear();
        }
    }

    /// Files `id` under the cell holding `position` (clamped into the grid).
    pub fn insert(&mut self, id: EntityId, position: Vec2) {
        let (x, y) = self.cell_of(position);
        self.cells[y * self.columns + x].push(id);
    }

    /// Calls `visit` for every id in cells that overlap the circle; callers check distance.
    ///
    /// Cells are visited row by row and ids in insertion order, so the order is
    /// deterministic for a given world.
    pub fn for_each_near(&self, center: Vec2, radius: f32, mut visit: impl FnMut(EntityId)) {
        if self.cells.is_empty() {
            return;
        }
        let (x0, y0) = self.cell_of(center - Vec2::splat(radius));
        let (x1, y1) = self.cell_of(center + Vec2::splat(radius));
        for y in y0..=y1 {
            for x in x0..=x1 {
                for &id in &self.cells[y * self.columns + x] {
                    if !id.is_null() {
                        visit(id);
                    }
                }
            }
        }
    }

    fn cell_of(&self, position: Vec2) -> (usize, usize) {
        let clamp = |v: f32, n: usize| ((v / self.cell_size).floor().max(0.0) as usize).min(n - 1);
        (
            clamp(position.x, self.columns),
            clamp(position.y, self.rows),
        )
    }
}
