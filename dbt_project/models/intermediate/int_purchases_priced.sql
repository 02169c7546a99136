{#
    One row per purchase (transaction event) at or before the cutoff, with the price of its
    item as of the purchase: the latest snapshot of the price property (var price_property,
    RetailRocket's 790) at or before the purchase; an item first priced after its purchase
    (RetailRocket's snapshots start weekly, some after the first sales) takes its earliest price
    at or before the cutoff instead; never a snapshot after the cutoff. Null when the item has
    no price at all. A point-in-time join on the purchased items only, in plain SQL (a row
    number over the candidate prices), so it runs on any engine.

    Materialized as a table: business_metrics_daily and recommendation_outcomes both read it,
    and it is the only other reader of the item property snapshots.
#}

{{ config(materialized='table') }}

with

events as (

    select * from {{ ref('events') }}

),

item_properties as (

    select * from {{ ref('stg_retailrocket__item_properties') }}

),

purchases as (

    select
        event_id,
        event_at as purchased_at,
        visitor_id,
        item_id,
        transaction_id

    from events
    where event_type = 'transaction'

),

prices as (

    select
        item_id,
        property_at as priced_at,
        numeric_value as price

    from item_properties
    where
        property_name = {{ price_property() }}
        and numeric_value is not null
        and property_at <= {{ cutoff_at() }}
        and item_id in (select purchases.item_id from purchases)

),

purchases_joined_to_prices as (

    select
        purchases.event_id,
        purchases.purchased_at,
        purchases.visitor_id,
        purchases.item_id,
        purchases.transaction_id,
        prices.price,
        prices.priced_at,
        row_number() over (
            partition by purchases.event_id
            order by
                case when prices.priced_at <= purchases.purchased_at then 0 else 1 end,
                case when prices.priced_at <= purchases.purchased_at then prices.priced_at end desc,
                prices.priced_at asc,
                prices.price desc
        ) as price_preference

    from purchases
    left join prices
        on purchases.item_id = prices.item_id

),

final as (

    select
        event_id,
        purchased_at,
        visitor_id,
        item_id,
        transaction_id,
        price,
        priced_at

    from purchases_joined_to_prices
    where price_preference = 1

)

select * from final
