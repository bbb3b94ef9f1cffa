"""Money: what the plant's losses cost, from the rates in the config's `costs:` sections.

An operations manager is judged on cost and budget, not on seconds. The plant config
says what a minute, a good part and a scrap part are worth (docs/costs.md), at the plant
(`costs:`), per line and per machine (`lines[].costs`, `lines[].machines[].costs`), and
per product at any of those levels (`costs.products`); the most specific setting wins,
field by field.

A machine record's losses are priced per loss category (the six big losses; time with no
data is not priced, since nobody knows what happened then):

- every lost second costs `downtime_minute_cost / 60` (labour and overhead paid while
  the machine does not make good parts);
- and the good parts that time would have made at the ideal rate are lost: lost seconds
  / ideal cycle time x `good_part_value` (value or margin of a good part). For the
  reject categories those are exactly the rejects;
- each reject also costs `scrap_part_cost` (material, disposal), shared between start-up
  and production rejects by their time.

Downtime by reason is priced the same way (seconds x minute cost, plus lost parts), so
the downtime reasons of a record sum to its equipment failure and setup costs, the
machines of a line to the line, the lines to the plant. A window that ran several
products is priced at the rates of the one that ran longest (the record's `product`);
fine windows (the API sums `1h` records) keep that close to exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from linepulse.production import LOSS_KEYS

if TYPE_CHECKING:
    from linepulse.config import PlantConfig

# The priced loss categories: the six big losses, not the time without data.
PRICED: Final = tuple(key.removesuffix("_s") for key in LOSS_KEYS if key != "no_data_s")
_REJECTS: Final = ("startup_rejects", "production_rejects")
DOWNTIME: Final = ("equipment_failure", "setup")  # the categories downtime reasons split


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartCosts(_Model):
    """Rates; a rate left out here is taken from the next level up (0 at the top)."""

    downtime_minute_cost: float | None = Field(default=None, ge=0)
    good_part_value: float | None = Field(default=None, ge=0)
    scrap_part_cost: float | None = Field(default=None, ge=0)


class MachineCosts(PartCosts):
    """A machine's (or line's, or the plant's) rates, and per product where they differ."""

    products: dict[str, PartCosts] = Field(default_factory=dict)


class Budget(_Model):
    """What a month may cost, and the OEE it should reach (either or both)."""

    monthly_loss: float | None = Field(default=None, gt=0)
    oee_target: float | None = Field(default=None, gt=0, le=1)


class LineCosts(MachineCosts):
    budget: Budget | None = None


class PlantCosts(LineCosts):
    currency: str = Field(default="EUR", min_length=1, max_length=8)


@dataclass(frozen=True)
class Rates:
    """What one machine's losses cost for one product."""

    minute: float
    part_value: float
    scrap: float
    ideal_cycle_s: float | None

    def seconds(self, lost_s: float) -> float:
        """Money lost with `lost_s` seconds of capacity: time plus the parts not made."""
        parts = lost_s / self.ideal_cycle_s if self.ideal_cycle_s else 0.0
        return lost_s / 60 * self.minute + parts * self.part_value


def _sets_a_rate(costs: MachineCosts) -> bool:
    return any(
        value is not None
        for part in (costs, *costs.products.values())
        for value in (part.downtime_minute_cost, part.good_part_value, part.scrap_part_cost)
    )


@dataclass(frozen=True)
class Priced:
    """A machine record's losses in money: per category, and downtime per reason."""

    by_category: dict[str, float]
    by_reason: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.by_category.values())


class Pricing:
    """A plant's rates, made once per plant and asked per record: a machine's rates for a
    product are looked up once (the metrics price every record the API reads, thousands a
    poll, and a lookup walks the plant's machines)."""

    def __init__(self, plant: PlantConfig) -> None:
        self.plant = plant
        self._machines = plant.machines()
        self._rates: dict[tuple[str, str | None], Rates] = {}
        levels: list[MachineCosts | None] = [plant.costs]
        for line in plant.lines:
            levels += [line.costs, *(m.costs for m in line.machines)]
        # Whether any level of the config sets a rate (else there is no money).
        self.configured = any(_sets_a_rate(level) for level in levels if level is not None)

    def rates(self, machine_id: str, product: str | None) -> Rates:
        """The rates of a machine for a product: per field, the first set of the machine's
        product, the line's product, the plant's product, the machine, the line, the
        plant."""
        key = (machine_id, product)
        known = self._rates.get(key)
        if known is None:
            known = self._rates[key] = self._resolve(machine_id, product)
        return known

    def _resolve(self, machine_id: str, product: str | None) -> Rates:
        line, machine = self._machines[machine_id]
        levels: list[PartCosts] = []
        holders = [c for c in (machine.costs, line.costs, self.plant.costs) if c is not None]
        if product is not None:
            levels += [c.products[product] for c in holders if product in c.products]
        levels += holders

        def first(name: str) -> float:
            return next((v for v in (getattr(c, name) for c in levels) if v is not None), 0.0)

        ideal = machine.ideal_cycle_time_s
        if product is not None and product in machine.products:
            ideal = machine.products[product].ideal_cycle_time_s
        return Rates(
            minute=first("downtime_minute_cost"),
            part_value=first("good_part_value"),
            scrap=first("scrap_part_cost"),
            ideal_cycle_s=ideal,
        )

    def price(self, record: Mapping[str, Any]) -> Priced | None:
        """A machine record's losses in money; None for a line record, or a record
        without the loss breakdown (its machine has no ideal cycle time, so parts cannot
        be valued)."""
        machine = record["machine"]
        if machine is None:
            return None
        by_category = self.categories(
            machine, record["product"], record["losses"], record["reject_count"]
        )
        if by_category is None:
            return None
        rate = self.rates(record["machine"], record["product"])
        by_reason = {
            reason: rate.seconds(seconds)
            for reason, seconds in record["downtime_by_reason"].items()
        }
        return Priced(by_category, by_reason)

    def categories(
        self,
        machine: str,
        product: str | None,
        losses: Mapping[str, float] | None,
        reject_count: int,
    ) -> dict[str, float] | None:
        """`price`'s cost per loss category alone, of a machine's record's fields (what
        the KPI record carries; the core asks it of every machine record it builds)."""
        if losses is None:
            return None
        rate = self.rates(machine, product)
        by_category = {name: rate.seconds(losses[f"{name}_s"]) for name in PRICED}
        reject_s = sum(losses[f"{name}_s"] for name in _REJECTS)
        if reject_s > 0:
            scrap = reject_count * rate.scrap
            for name in _REJECTS:
                by_category[name] += scrap * losses[f"{name}_s"] / reject_s
        return by_category
