{#
    Data drift (models/monitoring/drift_*): which features are watched, where the reference
    build is read from, and the statistics' thresholds. dbt_project/README.md, "Drift", says how
    to read the models.

    The reference is a build of the feature marts exported to the lake
    (<lake>/features/<monitoring_reference_version>/<mart>.parquet, macros/lake.sql); the
    current build is the warehouse's marts. Engine-specific SQL (reading a Parquet file, exact
    quantiles) is dispatched, as in engine_functions.sql; the rest is arithmetic every engine has.
#}


{#
    The features watched: (feature, kind, mart, column, value). A feature is named after the
    ranking feature its mart column feeds (recsys/ranking_features.py: ITEM_FEATURES,
    VISITOR_FEATURES and ranking_features.sql), else `<mart>.<column>`. The candidate-dependent
    ranking features (als_score, als_rank, is_seen, candidate_source) exist only for training
    cutoffs, so the drift models watch the mart columns the ranker's features are made of, over
    the marts' rows. `value` says how the column is read:
    - 'column': as it is;
    - 'days_before_cutoff': a timestamp, turned into days before the build's cutoff as the
      ranking feature does;
    - 'per_global_rate': a shrunk rate (cart_rate, purchase_rate), divided by its build's
      global rate, the prior it is shrunk towards (drift_rate_prior). Items without events
      (40% in the generated data) sit exactly at the prior, which moves a little with every
      build; read as they are, that point mass crosses a quantile edge and fails PSI and KS
      every week although no item changed (small scale, builds a week apart: PSI 2.6, KS 0.40;
      divided by the prior: PSI 0.02, KS 0.08). The global rate's own drift is the event
      mix's (drift_mixes).
    Categorical: leaf and root categories, booleans, the visitor's top category.
#}
{% macro drift_monitored_features() -%}
    {%- set rows = [
        ('category_id', 'categorical', 'item_features', 'category_id', 'column'),
        ('root_category_id', 'categorical', 'item_features', 'root_category_id', 'column'),
        ('is_available', 'categorical', 'item_features', 'is_available', 'column'),
        ('price', 'numeric', 'item_features', 'price', 'column'),
        ('item_views_7d', 'numeric', 'item_features', 'n_views_7d', 'column'),
        ('item_views_30d', 'numeric', 'item_features', 'n_views_30d', 'column'),
        ('item_views_all', 'numeric', 'item_features', 'n_views_all', 'column'),
        ('item_carts_all', 'numeric', 'item_features', 'n_carts_all', 'column'),
        ('item_purchases_all', 'numeric', 'item_features', 'n_purchases_all', 'column'),
        ('item_cart_rate', 'numeric', 'item_features', 'cart_rate', 'per_global_rate'),
        ('item_purchase_rate', 'numeric', 'item_features', 'purchase_rate', 'per_global_rate'),
        ('item_trend_7d', 'numeric', 'item_features', 'trend_7d', 'column'),
        ('item_popularity_score', 'numeric', 'item_features', 'popularity_score', 'column'),
        ('item_days_since_last_event', 'numeric', 'item_features', 'days_since_last_event', 'column'),
        ('visitor_events', 'numeric', 'visitor_features', 'n_events', 'column'),
        ('visitor_sessions', 'numeric', 'visitor_features', 'n_sessions', 'column'),
        ('visitor_distinct_items', 'numeric', 'visitor_features', 'n_distinct_items', 'column'),
        ('visitor_carts', 'numeric', 'visitor_features', 'n_carts', 'column'),
        ('visitor_purchases', 'numeric', 'visitor_features', 'n_purchases', 'column'),
        ('visitor_recency_days', 'numeric', 'visitor_features', 'recency_days', 'column'),
        ('visitor_tenure_days', 'numeric', 'visitor_features', 'tenure_days', 'column'),
        ('visitor_top_category_share', 'numeric', 'visitor_features', 'top_category_share', 'column'),
        ('visitor_features.top_category_id', 'categorical', 'visitor_features', 'top_category_id', 'column'),
        ('pair_events', 'numeric', 'interactions', 'n_events', 'column'),
        ('pair_weight', 'numeric', 'interactions', 'weight', 'column'),
        ('days_since_item_interaction', 'numeric', 'interactions', 'last_interaction_at', 'days_before_cutoff'),
        ('interactions.n_views', 'numeric', 'interactions', 'n_views', 'column'),
        ('interactions.n_carts', 'numeric', 'interactions', 'n_carts', 'column'),
        ('interactions.n_purchases', 'numeric', 'interactions', 'n_purchases', 'column'),
        ('category_events', 'numeric', 'visitor_category_affinities', 'n_events', 'column'),
        ('category_affinity_share', 'numeric', 'visitor_category_affinities', 'affinity_share', 'column'),
        ('category_affinity_score', 'numeric', 'visitor_category_affinities', 'affinity_score', 'column'),
        ('days_since_category_event', 'numeric', 'visitor_category_affinities', 'last_event_at', 'days_before_cutoff'),
        ('visitor_category_affinities.n_carts', 'numeric', 'visitor_category_affinities', 'n_carts', 'column'),
    ] -%}
    {%- set features = [] -%}
    {%- for feature, kind, mart, column, value in rows -%}
        {%- do features.append({
            'feature': feature, 'kind': kind, 'mart': mart, 'column': column, 'value': value,
        }) -%}
    {%- endfor -%}
    {{- return(features) -}}
{%- endmacro %}


{#
    The counts a 'per_global_rate' column is made of: {rate column: (events, views)}
    (item_features.sql: rate = (events + s * prior) / (views + s), s = rate_smoothing_views).
#}
{% macro drift_global_rate_counts() -%}
    {{- return({
        'cart_rate': ('n_carts_all', 'n_views_all'),
        'purchase_rate': ('n_purchases_all', 'n_views_all'),
    }) -}}
{%- endmacro %}


{#
    The prior of a shrunk rate column in one build (a window aggregate over the build's rows,
    `smoothing` its rate_smoothing_views): the rate of an item without views nor events (an
    item can be carted without a view), which is the prior itself; else solved from the items'
    rates and counts, (rate * (views + s) - events) / s, the largest (max, unlike a sum, does
    not depend on the order the engine reads the rows in). Read from the rows rather than as
    sum(events) / sum(views), so that it is right for a sample of the mart too.
#}
{% macro drift_rate_prior(column, smoothing) -%}
    {%- set events, views = drift_global_rate_counts()[column] -%}
    coalesce(
        max(case when {{ views }} = 0 and {{ events }} = 0 then {{ column }} end)
            over (partition by role),
        max(({{ column }} * ({{ views }} + {{ smoothing }}) - {{ events }}) / {{ smoothing }})
            over (partition by role)
    )
{%- endmacro %}


{# The columns of `mart` that the watched features read, each once, in the list's order. #}
{% macro drift_mart_columns(mart) -%}
    {%- set columns = [] -%}
    {%- for feature in drift_monitored_features() if feature.mart == mart -%}
        {%- set needed = [feature.column] -%}
        {%- if feature.value == 'per_global_rate' -%}
            {%- set needed = needed + (drift_global_rate_counts()[feature.column] | list) -%}
        {%- endif -%}
        {%- for column in needed if column not in columns -%}
            {%- do columns.append(column) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{- return(columns) -}}
{%- endmacro %}


{#
    The CTEs that give every watched feature's value in both builds, ending with
    `feature_values`: one row per role x feature x row of the feature's mart, the value as a
    double (numeric features) or as text (categorical ones), null when the mart's is.
    `builds` names the caller's CTE of drift_builds (role, cutoff_at, rate_smoothing_views).
    drift_feature_profiles bins these values and drift_features takes KS from them. A macro,
    not a model: at full scale they are tens of millions of rows, never worth storing, and as
    an ephemeral model they broke the second dbt command that recsys.warehouse runs on one
    parsed manifest (the ephemeral CTE was no longer injected).
#}
{% macro drift_feature_values_ctes(builds) -%}
    {%- set marts = ['item_features', 'visitor_features', 'interactions', 'visitor_category_affinities'] -%}
    {%- for mart in marts %}
current_{{ mart }} as (

    select * from {{ ref(mart) }}

),

reference_{{ mart }} as (

    select * from {{ drift_reference_relation(mart) }}

),

{#- the columns by name, never `*`: an older build's export may order them otherwise #}
{{ mart }}_of_both_builds as (
    {%- for role in ['reference', 'current'] %}

    select
        {{ builds }}.role,
        {{ builds }}.cutoff_at,
        {{ builds }}.rate_smoothing_views,
        {%- for column in drift_mart_columns(mart) %}
        {{ role }}_{{ mart }}.{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}

    from {{ role }}_{{ mart }}
    cross join {{ builds }}
    where {{ builds }}.role = '{{ role }}'
    {%- if not loop.last %}

    union all
    {%- endif %}
    {%- endfor %}

),

    {%- endfor %}

feature_values as (
    {%- for feature in drift_monitored_features() %}

    select
        role,
        '{{ feature.feature }}' as feature,
        {%- if feature.kind == 'categorical' %}
        cast(null as double) as value_number,
        cast({{ feature.column }} as {{ dbt.type_string() }}) as value_category
        {%- elif feature.value == 'days_before_cutoff' %}
        cast({{ seconds_between(feature.column, 'cutoff_at') }} / 86400.0 as double) as value_number,
        cast(null as {{ dbt.type_string() }}) as value_category
        {%- elif feature.value == 'per_global_rate' %}
        cast({{ feature.column }} as double)
        / nullif({{ drift_rate_prior(feature.column, 'rate_smoothing_views') }}, 0) as value_number,
        cast(null as {{ dbt.type_string() }}) as value_category
        {%- else %}
        cast({{ feature.column }} as double) as value_number,
        cast(null as {{ dbt.type_string() }}) as value_category
        {%- endif %}

    from {{ feature.mart }}_of_both_builds
    {%- if not loop.last %}

    union all
    {%- endif %}
    {%- endfor %}

)
{%- endmacro %}


{#
    The watched features as rows (feature, kind, source_mart, source_column), for the models
    to join their metadata to.
#}
{% macro drift_monitored_features_rows() -%}
    {%- for feature in drift_monitored_features() %}
    select
        cast('{{ feature.feature }}' as {{ dbt.type_string() }}) as feature,
        cast('{{ feature.kind }}' as {{ dbt.type_string() }}) as kind,
        cast('{{ feature.mart }}' as {{ dbt.type_string() }}) as source_mart,
        cast('{{ feature.column }}' as {{ dbt.type_string() }}) as source_column
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
{%- endmacro %}


{#
    Var monitoring_reference_version, checked before it becomes a path: letters, digits, '_',
    '.', '-' (not dots alone), so that it can only name a folder of <lake>/features/. None when
    the var is null or empty.
#}
{% macro drift_reference_version() -%}
    {%- set configured = var('monitoring_reference_version', none) -%}
    {%- if configured is none or (configured | string | trim) == '' -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- set version = configured | string | trim -%}
    {%- if not modules.re.match('^(?![.]+$)[A-Za-z0-9_.-]+$', version) -%}
        {{- exceptions.raise_compiler_error(
            "monitoring_reference_version: '" ~ version ~ "' is not a feature version "
            ~ "(letters, digits, '_', '.', '-'; it names a folder of <lake>/features/)"
        ) -}}
    {%- endif -%}
    {{- return(version) -}}
{%- endmacro %}


{#
    The reference build's export of `mart`: <lake>/features/<version>/<mart>.parquet. Without a
    reference version, the current mart with no rows (the same columns), so that every drift
    model builds empty (and at parse time, when the lake's root is not known yet). A missing
    file is an error naming the var and the path.
#}
{% macro drift_reference_relation(mart) -%}
    {%- set version = drift_reference_version() -%}
    {%- if version is none or not execute -%}
        {{- return('(select * from ' ~ ref(mart) ~ ' where 1 = 0)') -}}
    {%- endif -%}
    {%- set location = lake_uri() ~ '/features/' ~ version ~ '/' ~ mart ~ '.parquet' -%}
    {{- return(adapter.dispatch('drift_read_parquet', 'recsys')(location)) -}}
{%- endmacro %}

{% macro default__drift_read_parquet(location) -%}
    {{- return('parquet.`' ~ location ~ '`') -}}
{%- endmacro %}

{% macro duckdb__drift_read_parquet(location) -%}
    {%- if execute -%}
        {%- set found = run_query("select count(*) from glob('" ~ location ~ "')") -%}
        {%- if found.columns[0].values()[0] == 0 -%}
            {{- exceptions.raise_compiler_error(
                "monitoring_reference_version: no export of that build at " ~ location
                ~ " (the versions are the folders of <lake>/features/; a snapshot's manifest "
                ~ "names the one its model was trained on)"
            ) -}}
        {%- endif -%}
    {%- endif -%}
    {{- return("read_parquet('" ~ location ~ "')") -}}
{%- endmacro %}


{# 1 = 1 when a reference version is set, else 1 = 0: the drift models' rows depend on it. #}
{% macro drift_has_reference() -%}
    {{- '1 = 1' if drift_reference_version() is not none else '1 = 0' -}}
{%- endmacro %}


{#
    The exact quantiles of `column` at 1/bins, 2/bins, ..., (bins - 1)/bins, as an array (an
    aggregate), each interpolated linearly between the two closest order statistics:
    numpy.quantile's default method (DuckDB's quantile_cont, Spark's percentile). One aggregate
    for all of them: DuckDB then sorts the values once, not once per quantile.
#}
{% macro drift_quantiles(column, bins) -%}
    {%- set fractions = [] -%}
    {%- for i in range(1, bins) -%}
        {%- do fractions.append(i / bins) -%}
    {%- endfor -%}
    {{- return(adapter.dispatch('drift_quantiles', 'recsys')(column, fractions)) -}}
{%- endmacro %}

{% macro default__drift_quantiles(column, fractions) -%}
    percentile({{ column }}, array({{ fractions | join(', ') }}))
{%- endmacro %}

{% macro duckdb__drift_quantiles(column, fractions) -%}
    quantile_cont({{ column }}, [{{ fractions | join(', ') }}])
{%- endmacro %}


{# A drift var that must be a number (and an integer, or in an open interval). #}
{% macro _drift_number(name, integer=false, above=none, below=none) -%}
    {%- set value = var(name) -%}
    {%- if value is not number or value is boolean
        or (integer and value != (value | int))
        or (above is not none and value <= above)
        or (below is not none and value >= below) -%}
        {{- exceptions.raise_compiler_error(
            name ~ ": '" ~ value ~ "' should be " ~ ('an integer' if integer else 'a number')
            ~ (' above ' ~ above if above is not none else '')
            ~ (' below ' ~ below if below is not none else '')
        ) -}}
    {%- endif -%}
    {{- return(value) -}}
{%- endmacro %}


{# Var drift_bins: value bins of a numeric feature (before equal quantile edges merge). #}
{% macro drift_bins() -%}
    {{- return(_drift_number('drift_bins', integer=true, above=1) | int) -}}
{%- endmacro %}


{# Var drift_top_categories: categories kept apart; the rest of a feature's values are `other`. #}
{% macro drift_top_categories() -%}
    {{- return(_drift_number('drift_top_categories', integer=true, above=0) | int) -}}
{%- endmacro %}


{# Var drift_window_days: the event mixes compare the days before each build's cutoff. #}
{% macro drift_window_days() -%}
    {{- return(_drift_number('drift_window_days', integer=true, above=0) | int) -}}
{%- endmacro %}


{# Var drift_<statistic>_<level> (psi / ks, warn / fail), checked: warn no larger than fail. #}
{% macro drift_threshold(statistic, level) -%}
    {%- set warn = _drift_number('drift_' ~ statistic ~ '_warn', above=0) -%}
    {%- set fail = _drift_number('drift_' ~ statistic ~ '_fail', above=0) -%}
    {%- if warn > fail -%}
        {{- exceptions.raise_compiler_error(
            'drift_' ~ statistic ~ '_warn (' ~ warn ~ ') should not be above drift_'
            ~ statistic ~ '_fail (' ~ fail ~ ')'
        ) -}}
    {%- endif -%}
    {{- return(warn if level == 'warn' else fail) -}}
{%- endmacro %}


{#
    The smallest share PSI works with: a bin's share below it (an empty bin) counts as this, so
    that ln(c / r) stays finite. 1e-4: an empty bin facing a share s adds about
    s * ln(s / 1e-4), 0.046 for s = 1%.
#}
{% macro drift_share_floor() -%}
    1.0e-4
{%- endmacro %}


{# One bin's term of PSI: (c - r) * ln(c / r), both shares floored at drift_share_floor(). #}
{% macro drift_psi_term(current_share, reference_share) -%}
    (
        (greatest({{ current_share }}, {{ drift_share_floor() }})
            - greatest({{ reference_share }}, {{ drift_share_floor() }}))
        * ln(greatest({{ current_share }}, {{ drift_share_floor() }})
            / greatest({{ reference_share }}, {{ drift_share_floor() }}))
    )
{%- endmacro %}


{#
    Upper-tail quantile of the standard normal: z with P(Z > z) = p, for 0 < p <= 0.5, by
    Abramowitz and Stegun 26.2.23 (absolute error below 4.5e-4).
#}
{% macro drift_normal_upper_quantile(p) -%}
    {%- set t = 'sqrt(-2.0 * ln(' ~ p ~ '))' -%}
    (
        {{ t }} - (2.515517 + 0.802853 * {{ t }} + 0.010328 * {{ t }} * {{ t }})
        / (1.0 + 1.432788 * {{ t }} + 0.189269 * {{ t }} * {{ t }} + 0.001308 * {{ t }} * {{ t }} * {{ t }})
    )
{%- endmacro %}


{# Var drift_noise_alpha: the chance that noise alone crosses a threshold's noise floor. #}
{% macro drift_noise_alpha() -%}
    {{- return(_drift_number('drift_noise_alpha', above=0, below=0.5)) -}}
{%- endmacro %}


{#
    The (1 - drift_noise_alpha) quantile of chi-squared with `df` degrees of freedom: exact
    for 1 (a squared normal quantile) and 2 (-2 ln alpha) degrees, Wilson and Hilferty's
    cube-root approximation beyond: at alpha 0.001 above the exact quantile by 1.8% at 3
    degrees of freedom, under 1% from 6 on (a threshold a little on the safe side).
#}
{% macro drift_chi_squared_quantile(df) -%}
    {%- set alpha = drift_noise_alpha() -%}
    case
        when ({{ df }}) <= 1 then power({{ drift_normal_upper_quantile(alpha / 2) }}, 2)
        when ({{ df }}) = 2 then -2.0 * ln({{ alpha }})
        else ({{ df }}) * power(
            1.0 - 2.0e0 / (9.0 * ({{ df }}))
            + {{ drift_normal_upper_quantile(alpha) }} * sqrt(2.0e0 / (9.0 * ({{ df }}))),
            3
        )
    end
{%- endmacro %}


{#
    What PSI reaches by sampling noise alone, with probability drift_noise_alpha, between two
    samples of n_reference and n_current rows of one distribution over `n_bins` bins: PSI is
    then about chi-squared(n_bins - 1) * (1 / n_reference + 1 / n_current) (it is, to second
    order, the homogeneity chi-squared statistic scaled by the sample sizes).
#}
{% macro drift_psi_noise_floor(n_bins, n_reference, n_current) -%}
    (
        {{ drift_chi_squared_quantile('greatest((' ~ n_bins ~ ') - 1, 1)') }}
        * (1.0 / ({{ n_reference }}) + 1.0 / ({{ n_current }}))
    )
{%- endmacro %}


{#
    What the two-sample KS statistic reaches by noise alone with probability drift_noise_alpha:
    c(alpha) * sqrt((n + m) / (n * m)), c(alpha) = sqrt(-ln(alpha / 2) / 2) (1.95 at 0.001).
#}
{% macro drift_ks_noise_floor(n_reference, n_current) -%}
    (
        sqrt(-ln({{ drift_noise_alpha() }} / 2.0) / 2.0)
        * sqrt(
            (({{ n_reference }}) + ({{ n_current }}))
            / (cast({{ n_reference }} as double) * ({{ n_current }}))
        )
    )
{%- endmacro %}
