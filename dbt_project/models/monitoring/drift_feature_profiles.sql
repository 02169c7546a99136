{#
    Profiles of the watched features in the reference build and the current one, on the same
    bins: a numeric feature's bins are the reference's quantile edges (var drift_bins of them,
    equal edges merged), each bin (lower, upper]; a categorical feature's bins are the
    reference's var drift_top_categories most frequent values, then `other`. Every feature has a
    null bin (bin_index -1). Both builds get every bin, empty ones included, so that
    drift_features pairs them bin by bin.
#}

{%- set bins = drift_bins() %}
{%- set top_categories = drift_top_categories() %}

with

builds as (

    select * from {{ ref('drift_builds') }}

),

{#- current_<mart>, reference_<mart> and <mart>_of_both_builds for the four feature marts,
    then feature_values (role, feature, value_number, value_category): macros/drift.sql #}
{{ drift_feature_values_ctes('builds') }},

monitored_features as (

    {{ drift_monitored_features_rows() }}

),

values_grouped as (

    {#- each distinct value once per build and feature, with its rows: counts and categories
        have few distinct values, so the binning below joins far fewer rows than the marts have #}
    select
        role,
        feature,
        value_number,
        value_category,
        count(*) as n_rows

    from feature_values
    group by role, feature, value_number, value_category

),

values_counted as (

    select
        values_grouped.role,
        values_grouped.feature,
        monitored_features.kind,
        values_grouped.value_number,
        values_grouped.value_category,
        values_grouped.n_rows

    from values_grouped
    inner join monitored_features
        on values_grouped.feature = monitored_features.feature

),

reference_quantiles as (

    {#- the reference's quantiles at 1/bins, 2/bins, ..., (bins - 1)/bins, nulls left out #}
    select
        feature,
        {{ drift_quantiles('value_number', bins) }} as quantiles

    from feature_values
    where
        role = 'reference'
        and value_number is not null
    group by feature

),

quantiles_unnested as (

    select
        feature,
        {{ explode_list('quantiles') }} as edge

    from reference_quantiles

),

edges as (

    {#- distinct: equal quantiles (a count that is 0 for half the items) make one edge #}
    select distinct
        feature,
        edge

    from quantiles_unnested

),

edges_numbered as (

    select
        feature,
        edge,
        lag(edge) over (partition by feature order by edge) as previous_edge,
        row_number() over (partition by feature order by edge) - 1 as bin_index

    from edges

),

edges_per_feature as (

    select
        feature,
        count(*) as n_edges,
        max(edge) as last_edge

    from edges
    group by feature

),

numeric_bins as (

    {#- bin k is (edge k, edge k + 1]: the first from -infinity (lower_edge null), the last
        to +infinity (upper_edge null); without a reference value, one bin of everything #}
    select
        feature,
        bin_index,
        previous_edge as lower_edge,
        edge as upper_edge

    from edges_numbered

    union all

    select
        monitored_features.feature,
        coalesce(edges_per_feature.n_edges, 0) as bin_index,
        edges_per_feature.last_edge as lower_edge,
        cast(null as double) as upper_edge

    from monitored_features
    left join edges_per_feature
        on monitored_features.feature = edges_per_feature.feature
    where monitored_features.kind = 'numeric'

),

reference_categories_ranked as (

    select
        feature,
        value_category,
        row_number() over (
            partition by feature
            order by n_rows desc, value_category asc
        ) - 1 as bin_index

    from values_counted
    where
        role = 'reference'
        and kind = 'categorical'
        and value_category is not null

),

top_categories as (

    select
        feature,
        value_category,
        bin_index

    from reference_categories_ranked
    where bin_index < {{ top_categories }}

),

top_categories_per_feature as (

    select
        feature,
        count(*) as n_top_categories

    from top_categories
    group by feature

),

categorical_bins as (

    select
        feature,
        bin_index,
        value_category as bin_label

    from top_categories

    union all

    {#- every value the reference did not rank among its top ones, and every new value #}
    select
        monitored_features.feature,
        coalesce(top_categories_per_feature.n_top_categories, 0) as bin_index,
        'other' as bin_label

    from monitored_features
    left join top_categories_per_feature
        on monitored_features.feature = top_categories_per_feature.feature
    where monitored_features.kind = 'categorical'

),

all_bins as (

    select
        feature,
        bin_index,
        {{ dbt.concat([
            "'('",
            "coalesce(" ~ number_label('lower_edge') ~ ", '-inf')",
            "', '",
            "coalesce(" ~ number_label('upper_edge') ~ ", 'inf')",
            "']'",
        ]) }} as bin_label,
        lower_edge,
        upper_edge

    from numeric_bins

    union all

    select
        feature,
        bin_index,
        bin_label,
        cast(null as double) as lower_edge,
        cast(null as double) as upper_edge

    from categorical_bins

    union all

    select
        feature,
        -1 as bin_index,
        'null' as bin_label,
        cast(null as double) as lower_edge,
        cast(null as double) as upper_edge

    from monitored_features

),

numeric_values_binned as (

    select
        values_counted.role,
        values_counted.feature,
        numeric_bins.bin_index,
        values_counted.n_rows

    from values_counted
    inner join numeric_bins
        on values_counted.feature = numeric_bins.feature
        and (numeric_bins.lower_edge is null or values_counted.value_number > numeric_bins.lower_edge)
        and (numeric_bins.upper_edge is null or values_counted.value_number <= numeric_bins.upper_edge)
    where
        values_counted.kind = 'numeric'
        and values_counted.value_number is not null

),

categorical_values_binned as (

    select
        values_counted.role,
        values_counted.feature,
        coalesce(
            top_categories.bin_index, top_categories_per_feature.n_top_categories, 0
        ) as bin_index,
        values_counted.n_rows

    from values_counted
    left join top_categories
        on values_counted.feature = top_categories.feature
        and values_counted.value_category = top_categories.value_category
    left join top_categories_per_feature
        on values_counted.feature = top_categories_per_feature.feature
    where
        values_counted.kind = 'categorical'
        and values_counted.value_category is not null

),

null_values as (

    select
        role,
        feature,
        -1 as bin_index,
        n_rows

    from values_counted
    where
        (kind = 'numeric' and value_number is null)
        or (kind = 'categorical' and value_category is null)

),

values_binned as (

    select * from numeric_values_binned
    union all
    select * from categorical_values_binned
    union all
    select * from null_values

),

rows_per_bin as (

    select
        role,
        feature,
        bin_index,
        sum(n_rows) as n_rows_in_bin

    from values_binned
    group by role, feature, bin_index

),

feature_totals as (

    select
        role,
        feature,
        sum(n_rows) as n_rows,
        sum(
            case
                when value_number is null and value_category is null then n_rows else 0
            end
        ) as n_null_rows,
        sum(value_number * n_rows)
        / nullif(sum(case when value_number is not null then n_rows else 0 end), 0) as mean

    from values_counted
    group by role, feature

),

profiles as (

    select
        builds.role,
        builds.feature_version,
        monitored_features.feature,
        monitored_features.kind,
        monitored_features.source_mart,
        monitored_features.source_column,
        all_bins.bin_index,
        all_bins.bin_label,
        all_bins.lower_edge,
        all_bins.upper_edge,
        coalesce(rows_per_bin.n_rows_in_bin, 0) as n_rows_in_bin,
        coalesce(feature_totals.n_rows, 0) as n_rows,
        feature_totals.n_null_rows,
        feature_totals.mean

    from builds
    cross join all_bins
    inner join monitored_features
        on all_bins.feature = monitored_features.feature
    left join rows_per_bin
        on builds.role = rows_per_bin.role
        and all_bins.feature = rows_per_bin.feature
        and all_bins.bin_index = rows_per_bin.bin_index
    left join feature_totals
        on builds.role = feature_totals.role
        and all_bins.feature = feature_totals.feature

),

final as (

    select
        cast(role as {{ dbt.type_string() }}) as role,  -- noqa: RF04
        cast(feature_version as {{ dbt.type_string() }}) as feature_version,
        cast(feature as {{ dbt.type_string() }}) as feature,
        cast(kind as {{ dbt.type_string() }}) as kind,
        cast(source_mart as {{ dbt.type_string() }}) as source_mart,
        cast(source_column as {{ dbt.type_string() }}) as source_column,
        cast(bin_index as integer) as bin_index,
        cast(bin_label as {{ dbt.type_string() }}) as bin_label,
        cast(lower_edge as double) as lower_edge,
        cast(upper_edge as double) as upper_edge,
        cast(n_rows_in_bin as bigint) as n_rows_in_bin,
        cast(cast(n_rows_in_bin as double) / nullif(n_rows, 0) as double) as share,  -- noqa: RF04
        cast(n_rows as bigint) as n_rows,
        cast(cast(n_null_rows as double) / nullif(n_rows, 0) as double) as null_share,
        cast(case when kind = 'numeric' then mean end as double) as mean

    from profiles

)

select * from final
