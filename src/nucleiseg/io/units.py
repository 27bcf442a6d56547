"""Physical units: the pixel size of a TIFF, where it came from, and diameters in µm or pixels.

The pixel size (µm per pixel) of a TIFF is read, in this order, from

1. OME-XML ``Pixels/@PhysicalSizeX``/``@PhysicalSizeY`` with their ``...Unit`` (µm when absent);
2. ImageJ metadata: ``XResolution``/``YResolution`` (pixels per ``unit``) with the ``unit=``
   entry of the ImageJ description (``spacing=`` is the Z step, not the pixel size);
3. the TIFF resolution tags ``XResolution``/``YResolution`` with ``ResolutionUnit`` centimetre
   or inch. Inch resolutions of 1,200 dpi or less (72, 96, 300 dpi...) are screen or print
   settings that image editors write by default, not a microscope's sampling, and are ignored,
   as is ``ResolutionUnit`` NONE without ImageJ metadata.

When X and Y differ, the pixel size is their geometric mean (areas in µm² stay exact). A value
given by the user (``--pixel-size``) overrides the file's. :class:`PixelSize` carries the value
and its source (``"metadata"``, ``"option"`` or ``"none"``) into ``run.json``.

Diameters are written ``30`` or ``30px`` (pixels), ``8um`` or ``8 µm`` (micrometres, needs a
pixel size), and ``0``, ``auto`` or nothing for "estimate it" (:func:`parse_diameter`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Diameter", "PixelSize", "parse_diameter", "parse_pixel_size", "pixel_size_of", "resolution_tags", "tiff_pixel_size"]

#: Micrometres per unit, for the unit names OME, ImageJ and people write.
_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "micrometres": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
}  # fmt: skip
#: Pixel sizes outside this range (µm) are not believed (a corrupt or placeholder value).
PLAUSIBLE_UM = (1e-4, 1e4)
#: Inch resolutions up to this are screen/print defaults (72, 96, 300 dpi), not microscope sampling.
MAX_PRINT_DPI = 1200.0
SOURCES = ("metadata", "option", "none")


def _um_per(unit: Any) -> float | None:
    """Micrometres per ``unit`` (a name such as ``"µm"`` or ``"micron"``), None for unknown units."""
    key = str(unit or "").strip().lower()
    return _UM_PER_UNIT.get(key)


def _plausible(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or not PLAUSIBLE_UM[0] <= value <= PLAUSIBLE_UM[1]:
        return None
    return float(value)


def _mean(x: float | None, y: float | None) -> float | None:
    """Geometric mean of the X and Y sizes (Y alone counts as missing; X alone is used)."""
    if x is None:
        return None
    return math.sqrt(x * y) if y is not None else x


@dataclass(frozen=True)
class PixelSize:
    """The pixel size of an image and where it came from.

    Attributes
    ----------
    um : float or None
        Micrometres per pixel; None when unknown.
    source : {"metadata", "option", "none"}
        The file's metadata, the user's ``--pixel-size``, or nothing known.
    detail : str or None
        Which metadata (``"OME"``, ``"ImageJ"``, ``"TIFF resolution"``), for the record.
    """

    um: float | None = None
    source: str = "none"
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"pixel size source must be one of {SOURCES}, got {self.source!r}")
        if (self.um is None) != (self.source == "none"):
            raise ValueError(f"a pixel size of {self.um} cannot have source {self.source!r}")

    def record(self) -> dict[str, Any]:
        """Fields for ``run.json`` and sidecars: ``pixel_size_um`` and ``pixel_size_source`` (+ detail)."""
        out: dict[str, Any] = {"pixel_size_um": None if self.um is None else round(self.um, 6), "pixel_size_source": self.source}
        if self.detail:
            out["pixel_size_metadata"] = self.detail
        return out


def pixel_size_of(found: tuple[float, str] | None, option: float | None = None) -> PixelSize:
    """The pixel size to use: ``option`` (the user's) over ``found`` (metadata ``(um, detail)``)."""
    if option is not None:
        return PixelSize(parse_pixel_size(option), "option")
    if found is not None:
        return PixelSize(found[0], "metadata", found[1])
    return PixelSize()


def parse_pixel_size(value: Any) -> float:
    """A user's pixel size in µm (``0.65``, ``"0.65"``, ``"0.65um"``, ``"650nm"``) as a float.

    Raises
    ------
    ValueError
        Not a positive finite size in a known unit.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, factor = float(value), 1.0
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([^\s0-9.]*)\s*", str(value))
        factor_or_none = _um_per(match.group(2) or "um") if match else None
        if match is None or factor_or_none is None:
            raise ValueError(f"pixel size {value!r}: give micrometres per pixel, e.g. 0.65 or 0.65um")
        try:
            number = float(match.group(1))
        except ValueError:
            raise ValueError(f"pixel size {value!r}: give micrometres per pixel, e.g. 0.65 or 0.65um") from None
        factor = factor_or_none
    um = number * factor
    if not math.isfinite(um) or um <= 0:
        raise ValueError(f"pixel size must be a positive number of micrometres, got {value!r}")
    return um


def _ome_size(tif: Any) -> float | None:
    import tifffile

    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    sizes = []
    for axis in "XY":
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        factor = _um_per(unit)
        sizes.append(_plausible(float(value) * factor) if value is not None and factor else None)
    return _mean(*sizes)


def _resolution_um(page: Any, um_per_unit: float) -> float | None:
    """Pixel size from the page's X/Y resolution tags (pixels per unit of ``um_per_unit`` µm)."""
    sizes = []
    for tag in ("XResolution", "YResolution"):
        found = page.tags.get(tag)
        value = found.value if found is not None else None
        try:
            per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
        except (TypeError, ZeroDivisionError, IndexError):
            per_unit = 0.0
        sizes.append(_plausible(um_per_unit / per_unit) if per_unit and per_unit > 0 else None)
    return _mean(*sizes)


def tiff_pixel_size(tif: Any) -> tuple[float, str] | None:
    """``(µm per pixel, which metadata)`` of an open :class:`tifffile.TiffFile`, or None.

    Broken or unknown metadata gives None, never an exception: the image is still read.
    """
    try:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_size(tif)
            if found is not None:
                return found, "OME"
        page = tif.pages.first
        if tif.is_imagej:
            factor = _um_per((tif.imagej_metadata or {}).get("unit"))
            found = _resolution_um(page, factor) if factor else None
            if found is not None:
                return found, "ImageJ"
        unit = page.tags.get("ResolutionUnit")
        unit_value = int(unit.value) if unit is not None else 2  # TIFF's default unit is the inch
        if unit_value == 3:
            found = _resolution_um(page, 1e4)
        elif unit_value == 2:
            found = _resolution_um(page, 25400.0)
            found = found if found is not None and 25400.0 / found > MAX_PRINT_DPI else None
        else:
            found = None
        return (found, "TIFF resolution") if found is not None else None
    except Exception:  # noqa: BLE001 (metadata is a bonus: any parsing problem means "unknown")
        return None


def resolution_tags(pixel_size: float | None, imagej: bool = False) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords that store ``pixel_size`` (µm): pixels per cm, or per µm for ImageJ files.

    Empty without a pixel size. ImageJ files carry the unit in their description, which the
    caller's ``metadata`` must then hold as ``unit="um"``.
    """
    if pixel_size is None:
        return {}
    if imagej:
        return {"resolution": (1.0 / pixel_size, 1.0 / pixel_size)}
    per_cm = 1e4 / pixel_size
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


@dataclass(frozen=True)
class Diameter:
    """A nucleus diameter as the user wrote it: a value and its unit, or None for "estimate".

    Attributes
    ----------
    value : float or None
        The number; None means estimate the diameter.
    unit : {"px", "um"}
        Pixels or micrometres.
    """

    value: float | None = None
    unit: str = "px"

    @classmethod
    def parse(cls, text: Any) -> Diameter:
        """``"30"``/``"30px"`` -> 30 px, ``"8um"``/``"8 µm"`` -> 8 µm, ``0``/``"auto"``/``""``/None -> estimate.

        Raises
        ------
        ValueError
            A negative or non-finite number or an unknown unit, in one line.
        """
        if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
            return cls()
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            number, unit = float(text), "px"
        else:
            match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([^\s0-9.]*)\s*", str(text))
            unit_text = (match.group(2) if match else "").lower()
            unit = "px" if unit_text in ("", "px", "pixel", "pixels") else "um" if _um_per(unit_text) == 1.0 else ""
            try:
                number = float(match.group(1)) if match and unit else math.nan
            except ValueError:
                number = math.nan
            if math.isnan(number):
                raise ValueError(f"diameter {text!r}: give pixels (30), micrometres (8um), or 0/auto to estimate it")
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"diameter must be >= 0 (0 or auto: estimate it), got {text!r}")
        return cls(None if number == 0 else number, unit)

    def pixels(self, pixel_size: float | None) -> float | None:
        """The diameter in pixels (None: estimate); micrometres need ``pixel_size`` (µm per pixel).

        Raises
        ------
        ValueError
            A diameter in µm without a pixel size.
        """
        if self.value is None or self.unit == "px":
            return self.value
        if pixel_size is None:
            raise ValueError(
                f"diameter {self.value:g} µm needs the pixel size: the image carries none; give --pixel-size "
                "(µm per pixel) or the diameter in pixels"
            )
        return self.value / float(pixel_size)

    def __str__(self) -> str:
        return "auto" if self.value is None else f"{self.value:g}{'px' if self.unit == 'px' else 'um'}"


def parse_diameter(text: Any, pixel_size: float | None = None) -> float | None:
    """A diameter as the user wrote it, in pixels: None means "estimate it".

    Parameters
    ----------
    text : str, float or None
        ``30`` or ``"30px"`` (pixels), ``"8um"``/``"8 µm"`` (micrometres), ``0``, ``"auto"``,
        ``""`` or None (estimate).
    pixel_size : float, optional
        Micrometres per pixel, needed for a diameter in µm.

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        Bad text, or µm without a pixel size (one-line message).

    Examples
    --------
    >>> parse_diameter("8um", 0.5), parse_diameter("0"), parse_diameter("auto"), parse_diameter(24)
    (16.0, None, None, 24.0)
    """
    return Diameter.parse(text).pixels(pixel_size)
