//! A grid composing existing PNGs (e.g. the sample plots of a table) into one image.

use super::{ensure_font, perr, save_rgb_png, SANS};
use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// Composes existing PNG images into one grid (up to 4 columns, row-major), each under its title.
/// Every cell is as large as the largest image; smaller images are centred. `panels` is
/// `(title, png path)`; an empty list or an unreadable image is an error.
pub fn plot_grid(path: &Path, panels: &[(String, PathBuf)]) -> Result<()> {
    const TITLE_H: u32 = 32;
    const PAD: u32 = 6;
    ensure!(!panels.is_empty(), "plot_grid needs at least one panel");
    let images = panels
        .iter()
        .map(|(_, p)| {
            image::open(p)
                .with_context(|| format!("cannot read panel image {}", p.display()))
                .map(|im| im.to_rgb8())
        })
        .collect::<Result<Vec<_>>>()?;
    let cw = images.iter().map(|im| im.width()).max().unwrap_or(1) + 2 * PAD;
    let ch = images.iter().map(|im| im.height()).max().unwrap_or(1) + TITLE_H + PAD;
    let cols = panels.len().min(4) as u32;
    let rows = (panels.len() as u32).div_ceil(cols);
    let (w, h) = (cols * cw, rows * ch);
    ensure!(
        u64::from(w) * u64::from(h) <= 400_000_000,
        "plot_grid: a {w}×{h} image is too large"
    );
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let origin = |k: usize| ((k as u32 % cols) * cw, (k as u32 / cols) * ch);
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = origin(k);
        let x = ox + (cw - im.width()) / 2;
        let y = oy + TITLE_H + (ch - TITLE_H - PAD - im.height()) / 2;
        image::imageops::replace(&mut canvas, im, i64::from(x), i64::from(y));
    }
    ensure_font();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style =
            TextStyle::from((SANS, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        for (k, (title, _)) in panels.iter().enumerate() {
            let (ox, oy) = origin(k);
            root.draw(&Text::new(
                title.clone(),
                ((ox + cw / 2) as i32, (oy + TITLE_H / 2 + 2) as i32),
                style.clone(),
            ))
            .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    save_rgb_png(path, &buf, (w, h))
}
