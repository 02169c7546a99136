{#
    How much one event says about a visitor's interest, shared by interactions, category affinities
    and item popularity so that they all agree.
#}

{# Weight of one event of the type in `column`, from var event_weights; unknown types weigh 0. #}
{% macro event_weight(column) -%}
    {%- set weights = var('event_weights') -%}
    case {{ column }}
        {%- for event_type, weight in weights.items() %}
        when '{{ event_type }}' then cast({{ weight }} as double)
        {%- endfor %}
        else cast(0 as double)
    end
{%- endmacro %}


{#
    Time decay of an event `age_days` old: exp(-ln 2 * age_days / half_life), written as
    0.5 ^ (age_days / half_life) (the same number, exact at whole half-lives).
#}
{% macro time_decay(age_days) -%}
    power(0.5, ({{ age_days }}) / cast({{ var('decay_half_life_days') }} as double))
{%- endmacro %}


{# Age in days (fractional) of a timestamp column at the cutoff. #}
{% macro age_days_at_cutoff(column) -%}
    ({{ seconds_between(column, cutoff_at()) }} / 86400.0)
{%- endmacro %}


{#
    Sum of a double expression that does not depend on the order the engine adds the rows in:
    each term is rounded to 15 decimals and added exactly as a DECIMAL(38, 15), which is what it
    returns (cast it to double in the final CTE; further sums of it stay exact). Floating-point
    addition is not associative, so a plain sum() over parallel threads can differ in the last
    bits from one build to the next; with this, the same data always gives the same features.
#}
{% macro exact_sum(expression) -%}
    sum(cast({{ expression }} as decimal(38, 15)))
{%- endmacro %}
