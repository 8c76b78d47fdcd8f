{#- Staging for bike_demand: one row per hour, typed and labelled.
    Runs for one window of weeks at a time; delete+insert on week_start
    replaces exactly the weeks of the window, so re-running a week is idempotent. -#}
{{ config(schema='bike_demand', alias='staged') }}

select
    cast("date" as timestamp)                                   as "date",
    cast(date_trunc('week', cast("date" as timestamp)) as date) as week_start,
    cast(hr as integer)                                         as hr,
    case season when 1 then 'winter' when 2 then 'spring'
                when 3 then 'summer' when 4 then 'fall' end     as season,
    lower(trim(weathersit))                                     as weathersit,
    cast(workingday as integer)                                 as workingday,
    cast(holiday as integer)                                    as holiday,
    cast(temp as {{ mlplatform_double() }})                                        as temp,
    cast(atemp as {{ mlplatform_double() }})                                       as atemp,
    cast(hum as {{ mlplatform_double() }})                                         as hum,
    cast(windspeed as {{ mlplatform_double() }})                                   as windspeed,
    cast(bikers as {{ mlplatform_double() }})                                      as bikers
from {{ source('bike_demand', 'raw') }}
where "date" >= cast('{{ var("min_time") }}' as timestamp)
  and "date" <  cast('{{ var("max_time") }}' as timestamp)
